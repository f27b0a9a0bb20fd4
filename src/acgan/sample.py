"""Load a generator from a checkpoint and make pictures: by class, class grids, class sweeps, interpolations."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from acgan.checkpoint import load_checkpoint, new_run_dir
from acgan.config import TrainConfig, config_from_dict
from acgan.data import to_uint8
from acgan.errors import UserError
from acgan.models import generator_for


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


def load_generator(checkpoint: Path, device: torch.device) -> tuple[nn.Module, tuple[str, ...], TrainConfig, int]:
    """G in eval mode, the class names, the training config and the step, from a checkpoint."""
    state = load_checkpoint(checkpoint, map_location=device)
    config = config_from_dict(state["config"])
    class_names = tuple(state["class_names"])
    config = config.resolved()  # older checkpoints name no arch: config_from_dict makes them the paper's
    G = generator_for(config, len(class_names)).to(device)
    G.load_state_dict(state["G_ema"] if state.get("G_ema") is not None else state["G"])
    return G.eval(), class_names, config, int(state["step"])


def resolve_class(spec: str, class_names: tuple[str, ...]) -> int:
    """A class given by index ('3') or name ('cat') -> its index; unknown -> UserError listing the classes."""
    if spec.isdigit() and int(spec) < len(class_names):
        return int(spec)
    lowered = [c.lower() for c in class_names]
    if spec.lower() in lowered:
        return lowered.index(spec.lower())
    shown = ", ".join(class_names[:20]) + (", ..." if len(class_names) > 20 else "")
    raise UserError(f"unknown class {spec!r}: use an index 0..{len(class_names) - 1} or one of {shown}")


@torch.no_grad()
def generate(G: nn.Module, z: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """uint8 images (N, 3, S, S) of classes y from noise z, in batches."""
    device = next(G.parameters()).device
    out = [to_uint8(G(z[i:i + batch_size].to(device), y[i:i + batch_size].to(device)))
           for i in range(0, len(z), batch_size)]
    return torch.cat(out)


def class_grid_inputs(num_classes: int, num_per_class: int, nz: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """z and y for a grid with one row per class; column j uses the same z in every row."""
    z = torch.randn(num_per_class, nz, generator=torch.Generator().manual_seed(seed))  # (n, nz)
    z = z.repeat(num_classes, 1)  # (K*n, nz): row-major, so each row is one class
    y = torch.arange(num_classes).repeat_interleave(num_per_class)  # (K*n,)
    return z, y


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (stays on the Gaussian shell, unlike a straight line) at fractions t."""
    cos = (z0 * z1).sum() / (z0.norm() * z1.norm())
    omega = torch.arccos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
    t = t[:, None]
    return (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)


def write_samples(checkpoint: Path, out_dir: Path | None, *, class_spec: str | None, num: int,
                  num_steps: int, seed: int, device: torch.device) -> Path:
    """Write the PNGs of `acgan sample` into a new numbered folder; returns that folder."""
    G, class_names, config, step = load_generator(checkpoint, device)
    K = len(class_names)
    if out_dir is None:
        run_dir = checkpoint.resolve().parent.parent
        out_dir = run_dir / "generated" if (run_dir / "config.json").is_file() else Path("generated")
    dest = new_run_dir(out_dir, f"step{step}")
    gen = torch.Generator().manual_seed(seed)
    if class_spec is not None:
        c = resolve_class(class_spec, class_names)
        z = torch.randn(num, config.nz, generator=gen)
        images = generate(G, z, torch.full((num,), c, dtype=torch.long))
        name = class_names[c].replace(os.sep, "_")
        for i, img in enumerate(images):
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(dest / f"{name}-{i:04d}.png")
        save_grid(images, dest / f"{name}-grid.png", nrow=min(num, 10))
        return dest
    cols = min(num, 10)
    z, y = class_grid_inputs(K, cols, config.nz, seed)
    save_grid(generate(G, z, y), dest / "class_grid.png", nrow=cols)
    # class sweep: each row one z, each column one class, so style stays and class changes
    z_sweep = torch.randn(cols, config.nz, generator=gen).repeat_interleave(K, dim=0)
    save_grid(generate(G, z_sweep, torch.arange(K).repeat(cols)), dest / "class_sweep.png", nrow=K)
    # interpolation: one row per class between the same two z, so only the class differs between rows
    z0, z1 = torch.randn(2, config.nz, generator=gen)
    path_z = slerp(z0, z1, torch.linspace(0, 1, num_steps)).repeat(K, 1)
    y_interp = torch.arange(K).repeat_interleave(num_steps)
    save_grid(generate(G, path_z, y_interp), dest / "interpolation.png", nrow=num_steps)
    return dest
