"""A procedurally generated 10-class dataset of simple shapes: the built-in demo and test data."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import numpy as np
import torch

from acgan.data.dataset import ImageDataset

SHAPE_NAMES: tuple[str, ...] = (
    "circle", "square", "triangle", "cross", "ring", "star", "hstripes", "checker", "diamond", "vstripes",
)
NUM_PER_CLASS = 1000

# Each image is drawn at twice its size and 2x2-averaged, which anti-aliases the edges.
_SUPERSAMPLE = 2
# Images rendered per chunk: bounds peak memory (chunk x (2S)^2 floats per temporary) at any N.
_CHUNK = 1024
# Minimum luminance gap between foreground and background, so every shape stays clearly visible.
_MIN_CONTRAST = 0.35

Mask = Callable[[np.ndarray, np.ndarray], np.ndarray]


def make_shapes(num_per_class: int, seed: int, image_size: int = 32) -> ImageDataset:
    """num_per_class random images of each shape class, shuffled; deterministic for a given seed."""
    if num_per_class < 1 or image_size < 8:
        raise ValueError(f"need num_per_class >= 1 and image_size >= 8, got {num_per_class}, {image_size}")
    # numpy rather than torch: its single-threaded kernels do not slow to a crawl when torch's
    # thread pool competes with other processes for a small machine's cores.
    gen = np.random.default_rng(seed % 2**64)
    images = []
    for mask in _MASKS:
        params = _draw_params(num_per_class, image_size, gen)
        images += [_render(mask, {k: v[i:i + _CHUNK] for k, v in params.items()}, image_size)
                   for i in range(0, num_per_class, _CHUNK)]
    labels = np.repeat(np.arange(len(SHAPE_NAMES), dtype=np.int64), num_per_class)
    order = gen.permutation(len(labels))
    x = np.concatenate(images)[order]  # (N, 3, S, S) uint8
    return ImageDataset(images=torch.from_numpy(x), labels=torch.from_numpy(labels[order]),
                        class_names=SHAPE_NAMES)


def load_shapes(split: str = "train", seed: int = 0, image_size: int = 32,
                num_per_class: int = NUM_PER_CLASS) -> ImageDataset:
    """The train split is make_shapes(num_per_class, seed); the test split uses a seed derived from it."""
    if split == "train":
        return make_shapes(num_per_class, seed, image_size)
    # Hashing (seed, split) keeps test images disjoint from the train images of every nearby seed.
    derived = int.from_bytes(hashlib.sha256(f"shapes/{split}/{seed}".encode()).digest()[:8], "little")
    return make_shapes(num_per_class, derived, image_size)


def _uniform(n: int, low: float, high: float, gen: np.random.Generator) -> np.ndarray:
    return gen.uniform(low, high, n).astype(np.float32)


def _draw_params(n: int, size: int, gen: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-image radius, aspect, center (in pixels) and foreground/background colours in [0, 1]."""
    radius = _uniform(n, 0.26, 0.42, gen) * size
    # Independent x/y stretch makes shapes vary more without turning one class into another.
    rx = radius * np.exp(_uniform(n, -0.12, 0.12, gen))
    ry = radius * np.exp(_uniform(n, -0.12, 0.12, gen))
    cx = rx + (size - 2 * rx) * _uniform(n, 0, 1, gen)
    cy = ry + (size - 2 * ry) * _uniform(n, 0, 1, gen)
    bg, fg = _draw_colours(n, gen)
    return {"rx": rx, "ry": ry, "cx": cx, "cy": cy, "bg": bg, "fg": fg}


def _draw_colours(n: int, gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(n, 3) background and foreground colours whose luminance differs by at least _MIN_CONTRAST."""
    luma = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    bg = gen.random((n, 3), dtype=np.float32)
    fg = gen.random((n, 3), dtype=np.float32)
    # Rejection sampling, vectorised: redraw only the failing foregrounds; a handful of rounds suffice.
    for _ in range(100):
        bad = np.abs((fg - bg) @ luma) < _MIN_CONTRAST
        if not bad.any():
            break
        fg[bad] = gen.random((int(bad.sum()), 3), dtype=np.float32)
    # Whatever is left after 100 rounds (practically nothing) gets the colour opposite its background.
    bad = np.abs((fg - bg) @ luma) < _MIN_CONTRAST
    fg[bad] = ((bg[bad] @ luma) < 0.5).astype(np.float32)[:, None]
    return bg, fg


def _render(mask: Mask, params: dict[str, np.ndarray], size: int) -> np.ndarray:
    """Draw one chunk of images of a single class as (n, 3, S, S) uint8."""
    n, fine = len(params["rx"]), size * _SUPERSAMPLE
    coords = (np.arange(fine, dtype=np.float32) + 0.5) / _SUPERSAMPLE  # pixel units
    dx = (coords[None, None, :] - params["cx"][:, None, None]) / params["rx"][:, None, None]  # (n, 1, 2S)
    dy = (coords[None, :, None] - params["cy"][:, None, None]) / params["ry"][:, None, None]  # (n, 2S, 1)
    inside = mask(dx, dy).astype(np.float32)  # (n, 2S, 2S) in {0, 1}
    alpha = inside.reshape(n, 1, size, _SUPERSAMPLE, size, _SUPERSAMPLE).mean(axis=(3, 5))  # (n, 1, S, S)
    bg = params["bg"][:, :, None, None]
    fg = params["fg"][:, :, None, None]
    x = bg + (fg - bg) * alpha  # (n, 3, S, S) float in [0, 1]
    return np.clip(np.rint(x * 255), 0, 255).astype(np.uint8)


def _circle(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    return dx * dx + dy * dy <= 1


def _square(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    return np.maximum(np.abs(dx), np.abs(dy)) <= 0.85


def _triangle(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    # Apex up at dy = -0.95, base at dy = 0.85 (image y grows downwards).
    return (dy <= 0.85) & (np.abs(dx) <= (dy + 0.95) * (1.0 / 1.8))


def _cross(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    ax, ay = np.abs(dx), np.abs(dy)
    return ((ax <= 0.3) & (ay <= 0.95)) | ((ay <= 0.3) & (ax <= 0.95))


def _ring(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    d2 = dx * dx + dy * dy
    return (d2 <= 1) & (d2 >= 0.5**2)


def _star(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    # Five points, one straight up: the allowed radius falls linearly from 1 at a tip to 0.42 between tips.
    sector = 2 * math.pi / 5
    angle = np.arctan2(dx, -dy)  # 0 points up
    t = np.remainder(angle, sector) / sector
    bound = 0.42 + 0.58 * np.abs(2 * t - 1)
    return dx * dx + dy * dy <= bound * bound


def _hstripes(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    # Three bars 0.4 radii thick at dy = -0.8, 0 and 0.8.
    return (np.abs(dx) <= 0.9) & (np.abs(dy) <= 1) & (np.cos(dy * (2.5 * math.pi)) >= 0)


def _checker(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    # A 4x4 board of half-radius cells.
    inside = np.maximum(np.abs(dx), np.abs(dy)) <= 1
    cells = np.floor((dx + 1) * 2) + np.floor((dy + 1) * 2)
    return inside & (np.remainder(cells, 2) == 0)


def _diamond(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    return np.abs(dx) + np.abs(dy) <= 1


def _vstripes(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    return _hstripes(dy, dx)


_MASKS: tuple[Mask, ...] = (
    _circle, _square, _triangle, _cross, _ring, _star, _hstripes, _checker, _diamond, _vstripes,
)
