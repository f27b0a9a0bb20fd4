"""Datasets (CIFAR-10/100, image folders, generated shapes) and the device-resident epoch sampler."""

from acgan.data.cifar import CIFAR_DOWNLOADS, download_cifar, load_cifar
from acgan.data.dataset import ImageDataset, resize_images, to_float, to_uint8
from acgan.data.folder import load_folder
from acgan.data.load import DATASETS, load_dataset
from acgan.data.sampler import EpochSampler
from acgan.data.shapes import SHAPE_NAMES, load_shapes, make_shapes

__all__ = [
    "CIFAR_DOWNLOADS",
    "DATASETS",
    "SHAPE_NAMES",
    "EpochSampler",
    "ImageDataset",
    "download_cifar",
    "load_cifar",
    "load_dataset",
    "load_folder",
    "load_shapes",
    "make_shapes",
    "resize_images",
    "to_float",
    "to_uint8",
]
