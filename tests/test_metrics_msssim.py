"""MS-SSIM against closed forms and an independent numpy/scipy port of the reference algorithm."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage, signal

from acgan.metrics import class_diversity, ms_ssim
from acgan.metrics.msssim import random_pairs

WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _gauss2d(size: int, sigma: float) -> np.ndarray:
    ax = np.arange(size) - (size - 1) / 2.0
    g = np.exp(-(ax[:, None] ** 2 + ax[None, :] ** 2) / (2 * sigma**2))
    return g / g.sum()


def _reference_ms_ssim(a: np.ndarray, b: np.ndarray, max_val: float = 255.0) -> float:
    """One (C, H, W) pair: 2-D FFT windows, reflect-padded 2x2 box downsampling, as the Google reference."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    c1, c2 = (0.01 * max_val) ** 2, (0.03 * max_val) ** 2
    terms = []
    for level in range(5):
        size = min(11, a.shape[1], a.shape[2])
        win = _gauss2d(size, 1.5 * size / 11)[None]
        blur = lambda z, w=win: signal.fftconvolve(z, w, mode="valid")  # noqa: E731
        mu_a, mu_b = blur(a), blur(b)
        va, vb, cov = blur(a * a) - mu_a**2, blur(b * b) - mu_b**2, blur(a * b) - mu_a * mu_b
        cs = (2 * cov + c2) / (va + vb + c2)
        if level == 4:
            terms.append(np.mean((2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1) * cs))
            break
        terms.append(np.mean(cs))
        box = np.ones((1, 2, 2)) / 4.0
        a, b = (ndimage.convolve(z, box, mode="reflect")[:, ::2, ::2] for z in (a, b))
    return float(np.prod(np.maximum(terms, 0.0) ** np.array(WEIGHTS)))


def _smooth_images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Blurred noise: natural-image-like correlations so MS-SSIM values are far from 0 and 1."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(n, 3, size // 4, size // 4, generator=gen)
    up = torch.nn.functional.interpolate(noise, size=(size, size), mode="bilinear", align_corners=False)
    return (up * 255).round().to(torch.uint8)


@pytest.mark.parametrize("shape", [(32, 32), (37, 45), (64, 64)])
def test_ms_ssim_matches_the_reference_algorithm(shape):
    gen = torch.Generator().manual_seed(1)
    base = _smooth_images(3, size=64, seed=2)[:, :, : shape[0], : shape[1]]
    noisy = (base.double() + torch.randn(base.shape, generator=gen) * 20).clamp(0, 255).to(torch.uint8)
    got = ms_ssim(base, noisy)
    expected = [_reference_ms_ssim(base[i].numpy(), noisy[i].numpy()) for i in range(3)]
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-9)


def test_ms_ssim_of_constant_images_is_the_luminance_term_to_the_last_weight():
    # Flat images have no variance at any scale: every contrast term is 1, only the luminance of
    # the coarsest scale is left, raised to its weight.
    a, b, c1 = 100.0, 180.0, (0.01 * 255) ** 2
    x, y = torch.full((1, 3, 32, 32), a), torch.full((1, 3, 32, 32), b)
    expected = ((2 * a * b + c1) / (a * a + b * b + c1)) ** WEIGHTS[-1]
    assert float(ms_ssim(x, y)) == pytest.approx(expected, rel=1e-12)


def test_ms_ssim_of_an_image_with_itself_is_one():
    x = torch.cat([_smooth_images(4), torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)])
    np.testing.assert_allclose(ms_ssim(x, x).numpy(), np.ones(8), atol=1e-12)


def test_ms_ssim_falls_as_noise_grows_and_is_symmetric():
    x = _smooth_images(6, seed=3)
    gen = torch.Generator().manual_seed(4)
    scores = []
    for sigma in (5.0, 20.0, 60.0):
        noisy = (x.double() + torch.randn(x.shape, generator=gen) * sigma).clamp(0, 255).to(torch.uint8)
        forward, backward = ms_ssim(x, noisy), ms_ssim(noisy, x)
        torch.testing.assert_close(forward, backward, rtol=1e-12, atol=0)
        scores.append(forward)
    assert bool(((scores[0] > scores[1]) & (scores[1] > scores[2])).all())
    assert bool((scores[0] < 1).all())


def test_random_pairs_never_pair_an_image_with_itself_and_reach_every_index():
    i, j = random_pairs(5, 2000, torch.Generator().manual_seed(0))
    assert bool((i != j).all())
    assert set(i.tolist()) == set(j.tolist()) == set(range(5))


def test_class_diversity_per_class():
    copies = _smooth_images(1, seed=5).expand(4, -1, -1, -1)  # class 0: one image four times
    varied = _smooth_images(4, seed=6)  # class 1: four different images
    lone = _smooth_images(1, seed=7)  # class 2: a single image, so no pair exists
    images = torch.cat([copies, varied, lone])
    labels = torch.tensor([0] * 4 + [1] * 4 + [2])
    div = class_diversity(images, labels, num_classes=4, num_pairs=30, seed=0)
    assert set(div) == {0, 1}
    assert div[0] == pytest.approx(1.0, abs=1e-12)
    pairwise = [float(ms_ssim(varied[a:a + 1], varied[b:b + 1])) for a in range(4) for b in range(4) if a != b]
    assert min(pairwise) <= div[1] <= max(pairwise) < 1.0
    assert math.isfinite(div[1])
