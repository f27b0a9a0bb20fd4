"""DiffAugment (Zhao et al., NeurIPS 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

The same random, differentiable transforms go on real and on fake batches before D sees them, so D cannot
memorise a small training set while G still gets gradients through the augmentation. Distributions follow
the authors' reference (mit-han-lab/data-efficient-gans, DiffAugment_pytorch.py): per image, brightness
+U(-0.5, 0.5), saturation x U(0, 2) around the per-pixel channel mean, contrast x U(0.5, 1.5) around the
image mean; translation by up to 1/8 of each side with zero fill; cutout of a zeroed half-side square whose
centre is uniform over the image (clipped at the borders). Everything is batched on x's device and draws
from the global torch RNG, so torch.manual_seed makes runs repeatable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from acgan.config import parse_diffaug

TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def _uniform(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """One U(low, high) draw per image, shaped (B, 1, 1, 1) in x's dtype."""
    # drawn in fp32 so bf16 inputs get the same distribution, then cast so the result keeps x's dtype
    u = torch.rand(x.shape[0], 1, 1, 1, device=x.device)  # (B, 1, 1, 1)
    return (low + (high - low) * u).to(x.dtype)


def _color(x: torch.Tensor) -> torch.Tensor:
    """Random brightness, then saturation, then contrast, each drawn per image."""
    x = x + _uniform(x, -0.5, 0.5)
    mean = x.mean(dim=1, keepdim=True)  # (B, 1, H, W): per-pixel grey level
    x = (x - mean) * _uniform(x, 0.0, 2.0) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return (x - mean) * _uniform(x, 0.5, 1.5) + mean


def _shifted_index(size: int, shift: torch.Tensor) -> torch.Tensor:
    """Source row (or column) of each output position in a zero-padded axis: (B, size) indices into size + 2."""
    pos = torch.arange(size, device=shift.device)[None, :] + shift[:, None]  # (B, size), -1 and size are padding
    return pos.clamp(-1, size) + 1


def _translation(x: torch.Tensor) -> torch.Tensor:
    """Shift each image by integers in [-S/8, S/8] per axis, filling with zeros."""
    B, C, H, W = x.shape
    max_h, max_w = int(H * TRANSLATION_RATIO + 0.5), int(W * TRANSLATION_RATIO + 0.5)
    shift_h = torch.randint(-max_h, max_h + 1, (B,), device=x.device)  # (B,)
    shift_w = torch.randint(-max_w, max_w + 1, (B,), device=x.device)  # (B,)
    # output pixel (i, j) reads input (i + shift_h, j + shift_w); a one-pixel zero border stands for "outside"
    x_pad = F.pad(x, (1, 1, 1, 1))  # (B, C, H + 2, W + 2)
    rows = _shifted_index(H, shift_h)[:, None, :, None].expand(B, C, H, W + 2)
    x_pad = x_pad.gather(2, rows)  # (B, C, H, W + 2)
    cols = _shifted_index(W, shift_w)[:, None, None, :].expand(B, C, H, W)
    return x_pad.gather(3, cols)  # (B, C, H, W)


def _cutout(x: torch.Tensor) -> torch.Tensor:
    """Zero a (S/2, S/2) square per image; its centre is uniform over the image, so it may hang off the edge."""
    B, _, H, W = x.shape
    size_h, size_w = int(H * CUTOUT_RATIO + 0.5), int(W * CUTOUT_RATIO + 0.5)
    # the reference's centre range: [0, S] for an even side, [0, S - 1] for an odd one
    top = torch.randint(0, H + (1 - size_h % 2), (B, 1), device=x.device) - size_h // 2  # (B, 1)
    left = torch.randint(0, W + (1 - size_w % 2), (B, 1), device=x.device) - size_w // 2  # (B, 1)
    rows = torch.arange(H, device=x.device)[None, :]  # (1, H)
    cols = torch.arange(W, device=x.device)[None, :]  # (1, W)
    in_rows = (rows >= top) & (rows < top + size_h)  # (B, H)
    in_cols = (cols >= left) & (cols < left + size_w)  # (B, W)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])  # (B, H, W)
    return x * keep[:, None].to(x.dtype)


_TRANSFORMS = {"color": _color, "translation": _translation, "cutout": _cutout}


def diff_augment(x: torch.Tensor, policy: str | tuple[str, ...] = ("color", "translation", "cutout")) -> torch.Tensor:
    """Apply the policy's transforms in order to a batch (B, C, H, W); same shape and dtype, differentiable.

    `policy` is a parsed tuple (what the training step passes, parsed once per run) or a --diffaug string.
    """
    for name in parse_diffaug(policy) if isinstance(policy, str) else policy:
        x = _TRANSFORMS[name](x)
    return x
