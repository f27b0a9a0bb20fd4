"""Class subsets and class names: `--classes 0-9,cat` picks classes, `--class_names FILE` names folder classes."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from acgan.data.dataset import ImageDataset
from acgan.errors import UserError

_RANGE = re.compile(r"^(\d+)-(\d+)$")


def parse_classes(spec: str, keys: Sequence[str], names: Sequence[str] | None = None) -> list[int]:
    """'0-9,cat,n01440764' -> sorted, unique class indices; a token is a name or key first, then an index or range."""
    names = list(names if names is not None else keys)
    lookup = {**{k: i for i, k in enumerate(keys)}, **{n: i for i, n in enumerate(names)}}
    num_classes = len(keys)
    chosen: set[int] = set()
    for token in (t.strip() for t in spec.split(",")):
        if not token:
            raise UserError(f"--classes {spec!r}: an empty entry (two commas, or one at the end)")
        # A folder may name its classes "3" or "7-9": its own names win over reading them as numbers.
        if token in lookup:
            chosen.add(lookup[token])
            continue
        match = _RANGE.match(token)
        if match:
            first, last = int(match[1]), int(match[2])
        elif token.isdigit():
            first = last = int(token)
        else:
            shown = ", ".join(names[:5]) + (", ..." if num_classes > 5 else "")
            raise UserError(f"--classes: no class named {token!r} (classes: {shown}; or indices 0-{num_classes - 1})")
        if first > last or last >= num_classes:
            raise UserError(f"--classes: {token!r} is not a range of class indices within 0-{num_classes - 1}")
        chosen.update(range(first, last + 1))
    return sorted(chosen)


def select_classes(dataset: ImageDataset, indices: Sequence[int]) -> ImageDataset:
    """The images of the given classes, relabelled 0..len(indices)-1 in the order of their old indices."""
    indices = sorted(indices)
    remap = torch.full((dataset.num_classes,), -1, dtype=torch.int64)
    remap[torch.tensor(indices, dtype=torch.int64)] = torch.arange(len(indices))
    new_labels = remap[dataset.labels]  # (N,) new label, -1 for classes left out
    rows = (new_labels >= 0).nonzero().squeeze(1)  # (M,) in the dataset's own order
    if len(rows) == 0:
        raise UserError("--classes selects no images")
    return ImageDataset(dataset.images.index_select(0, rows), new_labels[rows],
                        tuple(dataset.class_names[i] for i in indices))


def read_class_names(path: str | Path, keys: Sequence[str]) -> tuple[str, ...]:
    """Display names for class keys (folder names such as ImageNet's wnids) from a mapping file.

    The file is JSON ({"n01440764": "tench", ...}) or text with one "<key> <name>" per line, the layout of
    ImageNet's LOC_synset_mapping.txt. A name used by two keys gets its key appended, so names stay unique.
    """
    mapping = _read_mapping(Path(path).expanduser())
    missing = [k for k in keys if k not in mapping]
    if missing:
        raise UserError(f"--class_names {path}: no name for class {missing[0]!r}"
                        + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    names = [mapping[k] for k in keys]
    counts = {n: names.count(n) for n in set(names)}
    return tuple(n if counts[n] == 1 else f"{n} ({k})" for n, k in zip(names, keys, strict=True))


def _read_mapping(path: Path) -> dict[str, str]:
    """key -> name from a JSON object or '<key> <name>' lines."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"--class_names: could not read {path}: {exc}") from None
    if text.lstrip().startswith("{"):
        try:
            mapping = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"--class_names: {path} is not valid JSON ({exc})") from None
        if not all(isinstance(v, str) for v in mapping.values()):
            raise UserError(f"--class_names: {path} must map each class folder to a name (a string)")
        return {str(k): v.strip() for k, v in mapping.items()}
    mapping = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            raise UserError(f"--class_names: {path} line {number} is not '<folder> <name>'")
        mapping[parts[0]] = parts[1].strip()
    return mapping
