"""Multi-scale SSIM (Wang, Simoncelli and Bovik 2003) and the ACGAN per-class diversity score built on it.

Small images (the ACGAN paper scores 32x32 CIFAR-10 samples) are handled as in Google's reference
MS-SSIM (tensorflow/models, research/compression/image_encoder/msssim.py), which is what the ACGAN
diversity numbers were computed with: all 5 scales and their standard weights are kept, and at a scale
smaller than the 11-pixel window the window shrinks to the image side, its sigma shrinking in proportion
(1.5 * size / 11). For 32x32 that gives scales 32, 16, 8, 4, 2 with windows 11, 11, 8, 4, 2. Padding
would instead compare invented border pixels, and dropping scales would change the weighting, so either
would make the numbers incomparable with the paper's. SSIM and contrast terms are averaged over channels
and positions of each image, as in the reference; a negative contrast term (anti-correlated images, where
the reference gives NaN) is clamped to 0, as tf.image.ssim_multiscale does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def gaussian_window(size: int, sigma: float) -> Tensor:
    """Normalised 1-D Gaussian of `size` taps centred as MATLAB's fspecial (half-pixel offset if even)."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return g / g.sum()  # (size,)


def _valid_conv_matrix(window: Tensor, n: int) -> Tensor:
    """(n - k + 1, n) matrix whose product with a length-n signal is its 'valid' correlation with window."""
    k = window.numel()
    rows = torch.arange(n - k + 1).unsqueeze(1)  # (n-k+1, 1)
    offsets = torch.arange(n).unsqueeze(0) - rows  # (n-k+1, n)
    inside = (offsets >= 0) & (offsets < k)
    return torch.where(inside, window[offsets.clamp(0, k - 1)], torch.zeros((), dtype=window.dtype))


def _blur(x: Tensor, window: Tensor) -> Tensor:
    """Separable 'valid' Gaussian blur of every channel of x (N, C, H, W)."""
    # Two small dense matmuls: far faster on CPU than a grouped float64 conv2d for 32x32 images.
    rows = _valid_conv_matrix(window, x.shape[-2]).to(x)  # (H', H)
    cols = _valid_conv_matrix(window, x.shape[-1]).to(x)  # (W', W)
    n, c, h, w = x.shape
    y = x.reshape(-1, w) @ cols.T  # (N*C*H, W')
    y = y.view(n, c, h, -1).transpose(2, 3).reshape(-1, h) @ rows.T  # (N*C*W', H')
    return y.view(n, c, cols.shape[0], rows.shape[0]).transpose(2, 3)  # (N, C, H', W')


def ssim_and_contrast(
    x: Tensor, y: Tensor, data_range: float, win_size: int = 11, sigma: float = 1.5,
    k1: float = 0.01, k2: float = 0.03,
) -> tuple[Tensor, Tensor]:
    """Mean SSIM (N,) and mean contrast-structure term (N,) of float image pairs at one scale."""
    size = min(win_size, x.shape[-2], x.shape[-1])
    window = gaussian_window(size, sigma * size / win_size).to(x)
    n = x.shape[0]
    # One blur over all five moment images instead of five separate passes.
    moments = _blur(torch.cat([x, y, x * x, y * y, x * y]), window).split(n)  # 5 x (N, C, H', W')
    mu_x, mu_y, xx, yy, xy = moments
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    cs_map = (2.0 * cov + c2) / (var_x + var_y + c2)  # (N, C, H', W')
    ssim_map = (2.0 * mu_x * mu_y + c1) / (mu_x**2 + mu_y**2 + c1) * cs_map
    return ssim_map.mean(dim=(1, 2, 3)), cs_map.mean(dim=(1, 2, 3))


def ms_ssim(
    x: Tensor, y: Tensor, data_range: float = 255.0, win_size: int = 11, sigma: float = 1.5,
    weights: tuple[float, ...] = MS_SSIM_WEIGHTS,
) -> Tensor:
    """MS-SSIM of each image pair in x, y (N, C, H, W), uint8 or floats spanning `data_range`: (N,)."""
    if x.shape != y.shape or x.ndim != 4:
        raise ValueError(f"need two (N, C, H, W) batches of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.to(torch.float64), y.to(torch.float64)
    terms = []
    for level in range(len(weights)):
        ssim, cs = ssim_and_contrast(x, y, data_range, win_size, sigma)
        if level == len(weights) - 1:
            terms.append(ssim)
            break
        terms.append(cs)
        # 2x2 box filter then subsample; ceil_mode averages a lone odd edge pixel with itself only.
        x = F.avg_pool2d(x, 2, ceil_mode=True)
        y = F.avg_pool2d(y, 2, ceil_mode=True)
    stacked = torch.stack(terms, dim=-1).clamp_min(0.0)  # (N, levels)
    return (stacked ** torch.tensor(weights, dtype=torch.float64)).prod(dim=-1)


def random_pairs(count: int, num_pairs: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """`num_pairs` index pairs (i, j), i != j, drawn uniformly from range(count)."""
    first = torch.randint(count, (num_pairs,), generator=generator)
    second = torch.randint(count - 1, (num_pairs,), generator=generator)
    return first, second + (second >= first).long()  # skipping i keeps j uniform over the rest


def class_diversity(
    images: Tensor, labels: Tensor, num_classes: int, num_pairs: int = 100, seed: int = 0,
    batch_size: int = 500,
) -> dict[int, float]:
    """Mean MS-SSIM of random same-class pairs for each class (lower = more diverse); skips classes under 2."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.as_tensor(labels)
    out: dict[int, float] = {}
    for c in range(num_classes):
        members = torch.nonzero(labels == c).flatten()
        if members.numel() < 2:
            continue
        i, j = random_pairs(members.numel(), num_pairs, gen)
        a, b = members[i], members[j]
        scores = [ms_ssim(images[a[s:s + batch_size]], images[b[s:s + batch_size]])
                  for s in range(0, num_pairs, batch_size)]
        out[c] = float(torch.cat(scores).mean())
    return out
