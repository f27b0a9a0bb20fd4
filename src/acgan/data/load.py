"""One entry point that loads any supported dataset by name, optionally a subset of its classes."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from acgan.config import DATASETS
from acgan.data.cifar import CIFAR_SPECS, load_cifar
from acgan.data.classes import parse_classes, select_classes
from acgan.data.dataset import ImageDataset, resize_images
from acgan.data.folder import load_folder
from acgan.data.prepared import open_prepared, release_pages
from acgan.data.shapes import load_shapes
from acgan.errors import UserError

SPLITS: tuple[str, ...] = ("train", "test")
ONE_SPLIT_DATASETS: tuple[str, ...] = ("folder", "prepared")  # every image they hold is their one split


def load_dataset(name: str, root_dir: str | Path | None, *, split: str = "train", image_size: int = 32,
                 num_workers: int = 0, download: bool = False, seed: int = 0, classes: str | None = None,
                 class_names_file: str | Path | None = None) -> ImageDataset:
    """Load a dataset by name as square uint8 images of side image_size (seed matters only for shapes).

    classes ('0-9,cat') keeps those classes, renumbered in their order; class_names_file names a folder's classes.
    """
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}: use one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    if image_size < 8:
        raise UserError(f"image size must be at least 8 pixels, got {image_size}")
    if class_names_file is not None and name != "folder":
        raise UserError("--class_names applies to --dataset folder (a prepared dataset keeps the names it was "
                        "prepared with)")
    if name == "folder":
        if split != "train":
            raise UserError("the folder dataset has no test split: it uses every image in the folder")
        # the subset is chosen before decoding: ten classes of ImageNet decode ten classes' files
        return load_folder(root_dir, image_size=image_size, num_workers=num_workers, classes=classes,
                           class_names_file=class_names_file)
    dataset = _load_whole(name, root_dir, split, image_size, download, seed)
    if classes is None:
        return dataset
    indices = parse_classes(classes, dataset.class_names)
    if dataset.backing is None:
        return select_classes(dataset, indices)
    # a memory map's subset is copied into RAM: fine for ten classes of ImageNet, not for five hundred
    count = int(torch.isin(dataset.labels, torch.tensor(indices)).sum())
    size = count * dataset.images[0].numel()
    if size > os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 4:
        raise UserError(f"--classes {classes} selects {count:,} images ({size / 1e9:.1f} GB), too many to copy into "
                        f"memory: prepare the subset itself (acgan prepare ... --classes {classes})")
    subset = select_classes(dataset, indices)
    release_pages(dataset)  # the copy is made; the pages read for it need not stay in this process
    return subset


def _load_whole(name: str, root_dir: str | Path | None, split: str, image_size: int, download: bool,
                seed: int) -> ImageDataset:
    """Every class of a CIFAR, prepared or shapes dataset."""
    if name == "prepared":
        if split != "train":
            raise UserError("a prepared dataset is one split: prepare the test split into its own directory and "
                            "pass that as the train split")
        dataset = open_prepared(root_dir)
        if dataset.image_size != image_size:
            raise UserError(f"{root_dir} holds {dataset.image_size}x{dataset.image_size} images: pass --image_size "
                            f"{dataset.image_size} (or prepare it again at {image_size})")
        return dataset
    if name in CIFAR_SPECS:
        dataset = load_cifar(name, root_dir, split=split, download=download)
        if dataset.image_size == image_size:
            return dataset
        return ImageDataset(resize_images(dataset.images, image_size), dataset.labels, dataset.class_names)
    return load_shapes(split, seed, image_size)
