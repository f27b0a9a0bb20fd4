"""The in-memory labelled image dataset every loader returns."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 in [-1, 1], same shape and device: what the nets take."""
    return images.float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1] -> uint8 [0, 255], same shape, on the CPU: what files and metrics take."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


@dataclass(frozen=True)
class ImageDataset:
    """Square RGB images as one uint8 tensor, with int64 class labels and class names."""

    images: torch.Tensor  # (N, 3, H, W) uint8, CPU, contiguous (in RAM, or a view of a memory-mapped file)
    labels: torch.Tensor  # (N,) int64, values in [0, num_classes)
    class_names: tuple[str, ...]
    # A prepared dataset's: its manifest's content hash (hashing gigabytes on every open would take minutes),
    # and the file behind `images` (acgan.data.prepared.ImageFile), which streaming reads without mapping.
    key: str | None = field(default=None, compare=False)
    backing: Any = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        """Check the invariants once so every consumer can rely on them."""
        images, labels = self.images, self.labels
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W) uint8, got {tuple(images.shape)} {images.dtype}")
        if images.shape[2] != images.shape[3]:
            raise ValueError(f"images must be square, got {images.shape[2]}x{images.shape[3]}")
        if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
            got = f"{tuple(labels.shape)} {labels.dtype}"
            raise ValueError(f"labels must be ({images.shape[0]},) int64, got {got}")
        if not self.class_names:
            raise ValueError("a dataset needs at least one class name")
        if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= len(self.class_names)):
            raise ValueError(f"labels must lie in [0, {len(self.class_names)})")
        # Frozen: object.__setattr__ is the sanctioned way to normalise fields in __post_init__.
        object.__setattr__(self, "images", images.detach().cpu().contiguous())
        object.__setattr__(self, "labels", labels.detach().cpu().contiguous())
        object.__setattr__(self, "class_names", tuple(str(name) for name in self.class_names))

    @property
    def num_classes(self) -> int:
        """Number of classes (labels lie in [0, num_classes))."""
        return len(self.class_names)

    @property
    def image_size(self) -> int:
        """Side length in pixels of the square images."""
        return int(self.images.shape[2])

    def __len__(self) -> int:
        """Number of images."""
        return int(self.images.shape[0])

    def content_hash(self) -> str:
        """Sha256 hex digest of images, labels and class names, to key cached statistics."""
        if self.key is not None:
            return self.key
        return hash_content(tuple(self.images.shape), [self.images.numpy()], self.labels.numpy(), self.class_names)


def hash_content(shape: tuple[int, ...], image_chunks: Iterable[object], labels: object,
                 class_names: Iterable[str]) -> str:
    """The content hash of a dataset whose uint8 image bytes come in chunks (in order): one definition for all."""
    digest = hashlib.sha256()
    # The shape goes in too, so the same bytes laid out at another resolution hash differently.
    digest.update(repr(tuple(shape)).encode())
    for chunk in image_chunks:
        digest.update(memoryview(chunk).cast("B"))
    digest.update(memoryview(labels).cast("B"))
    digest.update("\0".join(class_names).encode("utf-8"))
    return digest.hexdigest()


def resize_images(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """Resize (N, 3, H, W) uint8 square images to image_size with antialiased bicubic interpolation."""
    if images.shape[-1] == image_size:
        return images
    chunks = []
    # Chunked so resizing 50k CIFAR images never holds a full float copy of the dataset.
    for chunk in images.split(2048):
        x = F.interpolate(chunk.float(), size=(image_size, image_size), mode="bicubic", antialias=True,
                          align_corners=False)
        chunks.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(chunks).contiguous()  # (N, 3, image_size, image_size) uint8
