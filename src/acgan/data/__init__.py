"""Datasets (CIFAR-10/100, image folders, prepared memory maps, generated shapes), class subsets, epoch samplers."""

from acgan.data.cifar import CIFAR_DOWNLOADS, download_cifar, load_cifar
from acgan.data.classes import parse_classes, read_class_names, select_classes
from acgan.data.dataset import ImageDataset, resize_images, to_float, to_uint8
from acgan.data.folder import load_folder
from acgan.data.load import DATASETS, ONE_SPLIT_DATASETS, load_dataset
from acgan.data.prepared import is_prepared, open_prepared, read_manifest, release_pages
from acgan.data.sampler import EpochSampler, StreamSampler, make_sampler
from acgan.data.shapes import SHAPE_NAMES, load_shapes, make_shapes

__all__ = [
    "CIFAR_DOWNLOADS",
    "DATASETS",
    "ONE_SPLIT_DATASETS",
    "SHAPE_NAMES",
    "EpochSampler",
    "ImageDataset",
    "StreamSampler",
    "download_cifar",
    "is_prepared",
    "load_cifar",
    "load_dataset",
    "load_folder",
    "load_shapes",
    "make_sampler",
    "make_shapes",
    "open_prepared",
    "parse_classes",
    "read_class_names",
    "read_manifest",
    "release_pages",
    "resize_images",
    "select_classes",
    "to_float",
    "to_uint8",
]
