"""CIFAR-10 / CIFAR-100 ("python version") from a directory, the batch directory or the .tar.gz itself."""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch

from acgan.data.dataset import ImageDataset
from acgan.data.safe_pickle import load_cifar_pickle
from acgan.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CifarSpec:
    """Where one CIFAR variant keeps its files and which pickle keys hold what."""

    dir_name: str
    archive_name: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    names_key: bytes
    labels_key: bytes
    num_classes: int


CIFAR_SPECS: dict[str, CifarSpec] = {
    "cifar10": CifarSpec(
        dir_name="cifar-10-batches-py",
        archive_name="cifar-10-python.tar.gz",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        meta_file="batches.meta",
        names_key=b"label_names",
        labels_key=b"labels",
        num_classes=10,
    ),
    "cifar100": CifarSpec(
        dir_name="cifar-100-python",
        archive_name="cifar-100-python.tar.gz",
        train_files=("train",),
        test_files=("test",),
        meta_file="meta",
        names_key=b"fine_label_names",
        labels_key=b"fine_labels",
        num_classes=100,
    ),
}

# (url, md5) of the official archives; a module-level dict so tests can point it at a local file.
CIFAR_DOWNLOADS: dict[str, tuple[str, str]] = {
    "cifar10": (
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        "c58f30108f718f92721af3b95e74349a",
    ),
    "cifar100": (
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
    ),
}

_PIXELS = 3 * 32 * 32
# The largest official file (CIFAR-100 train) is about 160 MB; anything far beyond is not CIFAR and would
# only be read into memory to be refused.
MAX_FILE_BYTES = 1 << 30


def load_cifar(name: str, root_dir: str | Path | None, *, split: str = "train", download: bool = False,
               url: str | None = None, md5: str | None = None) -> ImageDataset:
    """Load a CIFAR split as 32x32 uint8 images, downloading the official archive first if asked."""
    spec = _spec(name)
    if split not in ("train", "test"):
        raise UserError(f"unknown split {split!r} for {name}: use 'train' or 'test'")
    if root_dir is None:
        raise UserError(f"{name} needs a data directory holding {spec.archive_name} or {spec.dir_name}/")
    root = Path(root_dir).expanduser()
    source = _find_source(spec, root)
    if source is None and download:
        source = download_cifar(name, root, url=url, md5=md5)
    if source is None:
        raise UserError(
            f"no {name} data found: looked for {root / spec.dir_name}/, {root / spec.archive_name} and the "
            f"batch files in {root}; pass --download to fetch it"
        )
    files = spec.train_files if split == "train" else spec.test_files
    wanted = (spec.meta_file, *files)
    objects = _read_tar(source, wanted, spec) if source.is_file() else _read_dir(source, wanted)
    missing = [f for f in wanted if f not in objects]
    if missing:
        raise UserError(f"{name} data in {source} is incomplete: missing {', '.join(missing)}")
    class_names = _parse_meta(*objects[spec.meta_file], spec)
    batches = [_parse_batch(*objects[f], spec) for f in files]
    data = np.concatenate([d for d, _ in batches])  # (N, 3072) uint8: R, G, B planes, row-major
    labels = np.concatenate([lab for _, lab in batches])
    images = torch.from_numpy(data).view(-1, 3, 32, 32)  # (N, 3, 32, 32) uint8
    return ImageDataset(images=images, labels=torch.from_numpy(labels), class_names=class_names)


def download_cifar(name: str, root_dir: str | Path, *, url: str | None = None,
                   md5: str | None = None) -> Path:
    """Download the archive into root_dir via a temp file, check its md5, then rename it into place."""
    spec = _spec(name)
    default_url, default_md5 = CIFAR_DOWNLOADS[name]
    url, md5 = url or default_url, md5 or default_md5
    root = Path(root_dir).expanduser()
    target = root / spec.archive_name
    hint = f"put {spec.archive_name} in {root} yourself"
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.archive_name}.", suffix=".part", dir=root)
    except OSError as exc:
        raise UserError(f"could not create {root} to download {name} into: {exc}") from None
    tmp = Path(tmp_name)
    try:
        log.info("downloading %s to %s", url, target)
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5:
            got = digest.hexdigest()
            raise UserError(f"download of {url} is corrupt (md5 {got}, expected {md5}); {hint}")
        os.replace(tmp, target)
    except urllib.error.URLError as exc:
        raise UserError(f"could not download {url}: {exc.reason}; {hint}") from None
    # ValueError: a malformed URL; IncompleteRead: the connection dropped mid-file.
    except (OSError, ValueError, http.client.HTTPException) as exc:
        raise UserError(f"could not download {url}: {exc}; {hint}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _spec(name: str) -> CifarSpec:
    try:
        return CIFAR_SPECS[name]
    except KeyError:
        raise UserError(f"unknown CIFAR dataset {name!r}: use one of {', '.join(CIFAR_SPECS)}") from None


def _find_source(spec: CifarSpec, root: Path) -> Path | None:
    """The batch directory or archive under root, or None when there is neither."""
    if root.is_file():
        return root
    if (root / spec.dir_name).is_dir():
        return root / spec.dir_name
    if (root / spec.meta_file).is_file():
        return root
    if (root / spec.archive_name).is_file():
        return root / spec.archive_name
    return None


def _read_dir(batch_dir: Path, wanted: tuple[str, ...]) -> dict[str, tuple[Any, str]]:
    """Unpickle the wanted files present in batch_dir, keyed by file name, each with its source name."""
    objects = {}
    for file_name in wanted:
        path = batch_dir / file_name
        if not path.is_file():
            continue
        try:
            _check_size(path.stat().st_size, str(path))
            data = path.read_bytes()
        except OSError as exc:
            raise UserError(f"could not read {path}: {exc}") from None
        objects[file_name] = (load_cifar_pickle(data, str(path)), str(path))
    return objects


def _read_tar(archive: Path, wanted: tuple[str, ...], spec: CifarSpec) -> dict[str, tuple[Any, str]]:
    """Unpickle the wanted members of a tar archive in one sequential pass, without extracting to disk."""
    objects = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            # Iterating in archive order keeps a .tar.gz to one decompression pass.
            for member in tar:
                path = PurePosixPath(member.name)
                if not member.isfile() or path.name not in wanted or path.name in objects:
                    continue
                if len(path.parts) > 1 and path.parent.name != spec.dir_name:
                    continue
                source = f"{member.name} in {archive}"
                _check_size(member.size, source)
                file = tar.extractfile(member)
                assert file is not None  # isfile() members always have a file object
                objects[path.name] = (load_cifar_pickle(file.read(), source), source)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise UserError(f"could not read archive {archive}: {str(exc) or type(exc).__name__}") from None
    return objects


def _check_size(size: int, source: str) -> None:
    """Refuse a file too large to be a CIFAR batch before reading it into memory."""
    if size > MAX_FILE_BYTES:
        raise UserError(f"{source} is {size:,} bytes, far larger than any CIFAR file: refusing to read it")


def _parse_meta(meta: Any, source: str, spec: CifarSpec) -> tuple[str, ...]:
    """Class names from the unpickled meta file."""
    meta = _bytes_keys(meta, source)
    names = meta.get(spec.names_key)
    if not isinstance(names, (list, tuple)) or len(names) != spec.num_classes:
        raise UserError(f"{source} is not a CIFAR meta file: expected {spec.num_classes} "
                        f"{spec.names_key.decode()}")
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names)


def _parse_batch(batch: Any, source: str, spec: CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    """Checked (n, 3072) uint8 pixels and (n,) int64 labels from one unpickled batch."""
    batch = _bytes_keys(batch, source)
    for key in (b"data", spec.labels_key):
        if key not in batch:
            raise UserError(f"{source} is not a CIFAR batch: it has no {key.decode()!r} entry")
    data = batch[b"data"]
    is_pixels = isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
    if not is_pixels or data.shape[1] != _PIXELS:
        shape = getattr(data, "shape", type(data).__name__)
        raise UserError(f"{source} is not a CIFAR batch: data must be (n, {_PIXELS}) uint8, got {shape} "
                        f"{getattr(data, 'dtype', '')}".rstrip())
    try:
        raw = np.asarray(batch[spec.labels_key])
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{source} is not a CIFAR batch: its labels are not integers") from None
    # Checked by kind, not cast: int64 casting would silently turn 0.7, "3" or b"3" into a label.
    if raw.size and raw.dtype.kind not in "iu":
        raise UserError(f"{source} is not a CIFAR batch: its labels are not integers ({raw.dtype})")
    labels = raw.astype(np.int64)  # uint64 beyond int64 wraps negative and is refused as out of range below
    if labels.shape != (data.shape[0],):
        raise UserError(f"{source} has {data.shape[0]} images but labels of shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise UserError(f"{source} has labels outside [0, {spec.num_classes}): "
                        f"min {labels.min()}, max {labels.max()}")
    return data, labels


def _bytes_keys(obj: Any, source: str) -> dict[bytes, Any]:
    """The dict with str keys encoded, so files re-saved from Python 3 with str keys load too."""
    if not isinstance(obj, dict):
        raise UserError(f"{source} is not a CIFAR file: it holds a {type(obj).__name__}, not a dict")
    return {k.encode() if isinstance(k, str) else k: v for k, v in obj.items()}
