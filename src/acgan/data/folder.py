"""Labelled image folders: root/<class_name>/*.png|jpg|jpeg|webp|bmp, one class per subdirectory."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from acgan.data.classes import parse_classes, read_class_names
from acgan.data.dataset import ImageDataset
from acgan.errors import UserError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})

# Our own decompression-bomb limit, checked from the header before decoding, so it holds even where
# the process has switched off PIL's global Image.MAX_IMAGE_PIXELS.
MAX_IMAGE_PIXELS = 100_000_000

# Transparent pixels are composited onto white: sprite and icon sets usually expect a light background.
_BACKGROUND = (255, 255, 255)


def load_folder(root_dir: str | Path | None, *, image_size: int = 32, num_workers: int = 0,
                classes: str | None = None, class_names_file: str | Path | None = None) -> ImageDataset:
    """Decode every image under root_dir/<class>/ to square RGB (shorter side resized, center crop)."""
    listing = list_folder(root_dir, classes=classes, class_names_file=class_names_file)
    images = decode_images(listing.paths, image_size, num_workers)  # (N, 3, S, S) uint8
    return ImageDataset(
        images=torch.from_numpy(images),
        labels=torch.from_numpy(listing.labels),
        class_names=listing.class_names,
    )


@dataclass(frozen=True)
class FolderListing:
    """The image files of a class-folder tree, their labels and class names, before any decoding."""

    root: Path
    paths: list[Path]
    labels: np.ndarray  # (N,) int64
    class_names: tuple[str, ...]
    class_keys: tuple[str, ...]  # the folder name of each class (ImageNet: its wnid)


def list_folder(root_dir: str | Path | None, *, classes: str | None = None,
                class_names_file: str | Path | None = None) -> FolderListing:
    """List root_dir/<class>/ images: class folders sorted by name; --classes picks and renumbers them in order."""
    if root_dir is None:
        raise UserError("the folder dataset needs a data directory holding one subfolder per class")
    root = Path(root_dir).expanduser()
    if not root.is_dir():
        raise UserError(f"image folder {root} does not exist or is not a directory")
    class_dirs = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                        key=lambda p: p.name)
    if not class_dirs:
        raise UserError(f"image folder {root} has no class subfolders (expected {root}/<class_name>/*.png)")
    keys = tuple(d.name for d in class_dirs)
    names = read_class_names(class_names_file, keys) if class_names_file is not None else keys
    chosen = parse_classes(classes, keys, names) if classes is not None else list(range(len(keys)))
    paths: list[Path] = []
    labels: list[int] = []
    for label, index in enumerate(chosen):  # only the chosen folders are listed: a 10-class subset of ImageNet is quick
        files = list_images(class_dirs[index])
        if not files:
            exts = ", ".join(sorted(IMAGE_EXTENSIONS))
            raise UserError(f"class folder {class_dirs[index]} has no images ({exts})")
        paths += files
        labels += [label] * len(files)
    return FolderListing(root, paths, np.asarray(labels, dtype=np.int64), tuple(names[i] for i in chosen),
                         tuple(keys[i] for i in chosen))


def list_images(class_dir: Path) -> list[Path]:
    """Image files directly in class_dir, sorted by name; other and hidden files are ignored."""
    # A dangling link is kept, so that decoding names it instead of the dataset silently shrinking.
    return sorted(
        (p for p in class_dir.iterdir()
         if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
         and (p.is_file() or (p.is_symlink() and not p.exists()))),
        key=lambda p: p.name,
    )


def decode_images(paths: list[Path], image_size: int, num_workers: int = 0) -> np.ndarray:
    """Decode paths into one (N, 3, S, S) uint8 array, in parallel threads when num_workers > 0."""
    # channels first as each image lands: a permute of the whole array afterwards would hold it twice
    out = np.empty((len(paths), 3, image_size, image_size), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = load_image(paths[i], image_size).transpose(2, 0, 1)

    if num_workers > 0:
        # Threads suffice: PIL releases the GIL while decoding and resampling.
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            for _ in pool.map(work, range(len(paths))):
                pass  # iterating re-raises a worker's UserError here, in file order
    else:
        for i in range(len(paths)):
            work(i)
    return out


def load_image(path: Path, image_size: int) -> np.ndarray:
    """One image file as (S, S, 3) uint8 RGB: shorter side resized to S, then center-cropped."""
    try:
        with Image.open(path) as im:
            width, height = im.size
            if width * height > MAX_IMAGE_PIXELS:
                raise UserError(f"image {path} is too large ({width}x{height} pixels); is it corrupt?")
            # draft() lets JPEG decode at a reduced scale that is still at least image_size.
            im.draft("RGB", (image_size, image_size))
            rgb = to_rgb(ImageOps.exif_transpose(im))
            return np.asarray(resize_center_crop(rgb, image_size), dtype=np.uint8)
    except UserError:
        raise
    except Image.DecompressionBombError:
        raise UserError(f"image {path} is too large to decode safely; is it corrupt?") from None
    # A broken file can fail anywhere in PIL (OSError, SyntaxError, struct.error, ...); whatever the
    # failure, the user needs to know which file to fix.
    except Exception as exc:
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__  # one line, whatever PIL says
        raise UserError(f"could not read image {path}: {detail}") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: 16/32-bit grey scaled to 8 bits, transparency composited on white."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # PIL's own convert("L") clips 16-bit values at 255 instead of scaling them.
        grey = np.asarray(im).astype(np.float64)
        grey = np.clip(np.rint(grey / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if im.mode == "F":
        grey = np.clip(np.rint(np.asarray(im)), 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if im.mode == "P" and "transparency" in im.info or im.mode in ("LA", "PA", "La", "RGBa"):
        im = im.convert("RGBA")
    if im.mode == "RGBA":
        background = Image.new("RGBA", im.size, _BACKGROUND + (255,))
        return Image.alpha_composite(background, im).convert("RGB")
    return im.convert("RGB")


def resize_center_crop(im: Image.Image, image_size: int) -> Image.Image:
    """Resize the shorter side to image_size and center-crop, as one resample of the central square."""
    width, height = im.size
    if width == height == image_size:
        return im  # already the target: a resample at scale 1 would only cost time
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    resample = Image.Resampling.LANCZOS if side > image_size else Image.Resampling.BICUBIC
    return im.resize((image_size, image_size), resample, box=(left, top, left + side, top + side))
