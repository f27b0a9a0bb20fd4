"""`acgan sample`: PNG grids of a trained generator by class, class grids, class sweeps and interpolations."""

from __future__ import annotations

import io
import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from acgan.checkpoint import new_run_dir
from acgan.config import EVAL_DEFAULTS
from acgan.generator import load_generator, output_parent


def make_grid(images: torch.Tensor, nrow: int, pad: int = 2) -> np.ndarray:
    """uint8 (N, 3, H, W) -> one (rows*H', nrow*W', 3) uint8 array, row-major, with a white border."""
    n, c, h, w = images.shape
    rows = max(1, math.ceil(n / nrow))
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    arr = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, 3)
    for i in range(n):
        r, col = divmod(i, nrow)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top:top + h, left:left + w] = arr[i]
    return grid


def save_grid(images: torch.Tensor, path: Path, nrow: int) -> Path:
    """Write a uint8 (N, 3, H, W) batch as one PNG grid, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        Image.fromarray(make_grid(images, nrow)).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # what a full disk left of it
    return path


def png_bytes(images: torch.Tensor, nrow: int) -> bytes:
    """A uint8 (N, 3, H, W) batch as the bytes of one PNG grid."""
    buf = io.BytesIO()
    Image.fromarray(make_grid(images, nrow)).save(buf, format="PNG")
    return buf.getvalue()


def write_samples(checkpoint: str | Path, out_dir: Path | None, *, class_spec: str | None, num: int,
                  num_steps: int, seed: int, device: torch.device, weights: str = EVAL_DEFAULTS.weights) -> Path:
    """Write the PNGs of `acgan sample` into a new numbered folder; returns that folder."""
    G = load_generator(checkpoint, device, weights)
    label = f"step{G.step}" + ("-raw" if weights == "raw" else "")  # the folder name says which G drew it
    if out_dir is None:  # <run>/generated for a run's checkpoint; ./generated otherwise, a packaged generator's too
        run_dir = output_parent(checkpoint)
        out_dir = run_dir / "generated" if (run_dir / "config.json").is_file() else Path("generated")
    if class_spec is not None:
        c = G.class_index(class_spec)  # before the folder is made: a bad class leaves nothing behind
        dest = new_run_dir(out_dir, label)
        images = G.sample(c, num, seed)
        name = G.class_names[c].replace(os.sep, "_")
        for i, img in enumerate(images):
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(dest / f"{name}-{i:04d}.png")
        save_grid(images, dest / f"{name}-grid.png", nrow=min(num, 10))
        return dest
    dest = new_run_dir(out_dir, label)
    cols, K = min(num, 10), len(G.class_names)
    save_grid(G.sample(None, cols, seed), dest / "class_grid.png", nrow=cols)
    # class sweep: each row one z, each column one class, so style stays and class changes
    save_grid(G.sweep(cols, seed), dest / "class_sweep.png", nrow=K)
    # interpolation: one row per class between the same two z, so only the class differs between rows
    save_grid(G.interpolate(None, num_steps, seed), dest / "interpolation.png", nrow=num_steps)
    return dest
