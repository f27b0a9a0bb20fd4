"""One entry point that loads any supported dataset by name."""

from __future__ import annotations

from pathlib import Path

from acgan.config import DATASETS
from acgan.data.cifar import CIFAR_SPECS, load_cifar
from acgan.data.dataset import ImageDataset, resize_images
from acgan.data.folder import load_folder
from acgan.data.shapes import load_shapes
from acgan.errors import UserError

SPLITS: tuple[str, ...] = ("train", "test")


def load_dataset(name: str, root_dir: str | Path | None, *, split: str = "train", image_size: int = 32,
                 num_workers: int = 0, download: bool = False, seed: int = 0) -> ImageDataset:
    """Load a dataset by name as square uint8 images of side image_size (seed matters only for shapes)."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if image_size < 8:
        raise UserError(f"image size must be at least 8 pixels, got {image_size}")
    if name in CIFAR_SPECS:
        dataset = load_cifar(name, root_dir, split=split, download=download)
        if dataset.image_size == image_size:
            return dataset
        return ImageDataset(resize_images(dataset.images, image_size), dataset.labels, dataset.class_names)
    if name == "folder":
        if split != "train":
            raise UserError("the folder dataset has no test split: it uses every image in the folder")
        return load_folder(root_dir, image_size=image_size, num_workers=num_workers)
    return load_shapes(split, seed, image_size)
