"""Prepared datasets: one uint8 image file opened as a memory map, with its labels and a manifest.

A prepared directory (written by `acgan prepare`) holds
    images.u8      (N, 3, S, S) uint8, C order, nothing else: a memory map of it is the image tensor
    labels.npy     (N,) int64
    manifest.json  format, count, size, class names, content hash, source, images left out
The manifest is written last, so a directory without one is a preparation still under way.
"""

from __future__ import annotations

import json
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from acgan.data.dataset import ImageDataset
from acgan.errors import UserError

FORMAT, FORMAT_VERSION = "acgan-prepared", 1
IMAGES_FILE, LABELS_FILE, MANIFEST_FILE = "images.u8", "labels.npy", "manifest.json"


def is_prepared(root_dir: str | Path) -> bool:
    """True when root_dir holds a finished prepared dataset."""
    return (Path(root_dir).expanduser() / MANIFEST_FILE).is_file()


def read_manifest(root_dir: str | Path | None) -> dict[str, Any]:
    """The manifest of a prepared directory, checked for the fields every reader relies on."""
    if root_dir is None:
        raise UserError("--dataset prepared needs --root_dir: a directory written by `acgan prepare`")
    root = Path(root_dir).expanduser()
    path = root / MANIFEST_FILE
    if not path.is_file():
        hint = " (its preparation has not finished: run `acgan prepare` again to resume)" if \
            (root / "progress.json").is_file() else ""
        raise UserError(f"{root} is not a prepared dataset: it has no {MANIFEST_FILE}{hint}; make one with "
                        "`acgan prepare --dataset ... --root_dir ... --out DIR`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is damaged: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{path} is not an acgan prepared-dataset manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise UserError(f"{path} has format version {manifest.get('version')}; this acgan reads version "
                        f"{FORMAT_VERSION}: prepare the data again")
    fields = {"num_images": int, "image_size": int, "class_names": list, "content_hash": str}
    bad = [k for k, kind in fields.items() if not isinstance(manifest.get(k), kind)]
    if bad or manifest["num_images"] < 1 or manifest["image_size"] < 1 or not manifest["class_names"]:
        raise UserError(f"{path} is damaged: {', '.join(bad) or 'its counts'} missing or of the wrong type")
    return manifest


def open_prepared(root_dir: str | Path | None) -> ImageDataset:
    """Open a prepared directory: labels in RAM, images as a read-only-in-effect memory map."""
    manifest = read_manifest(root_dir)
    root = Path(root_dir).expanduser()  # type: ignore[arg-type]
    n, s = manifest["num_images"], manifest["image_size"]
    path = root / IMAGES_FILE
    expected = n * 3 * s * s
    size = path.stat().st_size if path.is_file() else -1
    if size != expected:
        raise UserError(f"{path} is damaged or missing: {size} bytes where the manifest needs {expected} "
                        f"({n} images of {s}x{s}); prepare the data again")
    labels = _read_labels(root / LABELS_FILE, n, len(manifest["class_names"]))
    backing = ImageFile(path, 3 * s * s)
    images = torch.from_numpy(np.frombuffer(backing.mapping, dtype=np.uint8).reshape(n, 3, s, s))
    return ImageDataset(images, torch.from_numpy(labels), tuple(manifest["class_names"]),
                        key=manifest["content_hash"], backing=backing)


class ImageFile:
    """The file behind a prepared dataset's images: a memory map for random access, and reads that bypass it.

    Every page a process touches through a map counts in its RSS, and the kernel maps a fault's neighbours too
    (64 KB for a 12 KB image), so streaming a dataset through the map would grow RSS towards the file's size.
    Streaming therefore reads rows with pread: the bytes come from the page cache, which every process that
    reads the file shares, and nothing stays mapped.
    """

    def __init__(self, path: Path, row_bytes: int) -> None:
        self.path, self.row_bytes = path, row_bytes
        self.fd = os.open(path, os.O_RDONLY)
        # A private (copy-on-write) mapping: writable as far as torch can tell, so no warning and no copy;
        # nothing writes to it, so its pages stay the page cache's.
        self.mapping = mmap.mmap(self.fd, 0, access=mmap.ACCESS_COPY)

    def read_rows(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Read image rows (in any order) into out, (len(rows), row_bytes) bytes, C-contiguous."""
        flat = out.reshape(len(rows), -1)
        for j, row in enumerate(rows.tolist()):
            if os.preadv(self.fd, [flat[j]], row * self.row_bytes) != self.row_bytes:
                raise OSError(f"{self.path}: short read at image {row}: the file changed or was truncated")

    def release(self) -> None:
        """Unmap the pages this process touched through the map; they stay in the page cache."""
        if hasattr(mmap, "MADV_DONTNEED"):
            self.mapping.madvise(mmap.MADV_DONTNEED)


def _read_labels(path: Path, num_images: int, num_classes: int) -> np.ndarray:
    """labels.npy as (N,) int64 in [0, num_classes), or one line saying what is wrong."""
    try:
        labels = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is damaged or missing: {exc}") from None
    if labels.dtype != np.int64 or labels.shape != (num_images,):
        raise UserError(f"{path} is damaged: {labels.shape} {labels.dtype} where ({num_images},) int64 is needed")
    if num_images and (labels.min() < 0 or labels.max() >= num_classes):
        raise UserError(f"{path} is damaged: labels outside 0-{num_classes - 1}")
    return np.ascontiguousarray(labels)


def release_pages(dataset: ImageDataset) -> None:
    """Hand back the map pages of a prepared dataset that this process touched (after a full pass, say)."""
    if dataset.backing is not None:
        dataset.backing.release()
