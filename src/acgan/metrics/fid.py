"""Frechet distance between Gaussians fitted to features (FID, Heusel et al. 2017) and its per-class form."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from acgan.errors import UserError


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of features (N, D), in float64."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"need features of shape (N >= 2, D), got {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), for covariance matrices."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: {mu1.shape}, {sigma1.shape} vs {mu2.shape}, {sigma2.shape}")
    diff = mu1 - mu2
    # Tr((S1 S2)^(1/2)) = Tr((R S2 R)^(1/2)) with R = S1^(1/2): a symmetric PSD matrix, so two eigh calls
    # replace scipy's general sqrtm (much faster at 2048-d, and no complex round-off to clean up).
    w1, v1 = np.linalg.eigh(sigma1)
    root1 = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T
    eig = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def intra_class_fid(
    real_feat: np.ndarray,
    real_labels: np.ndarray,
    fake_feat: np.ndarray,
    fake_labels: np.ndarray,
    num_classes: int,
) -> tuple[list[float], float]:
    """FID between real and generated features of each class (Miyato & Koyama 2018), and their mean."""
    real_labels, fake_labels = np.asarray(real_labels), np.asarray(fake_labels)
    per_class: list[float] = []
    for c in range(num_classes):
        real_c, fake_c = real_feat[real_labels == c], fake_feat[fake_labels == c]
        if len(real_c) < 2 or len(fake_c) < 2:
            raise UserError(
                f"intra-class FID needs at least 2 real and 2 generated images of class {c}, "
                f"got {len(real_c)} and {len(fake_c)}"
            )
        per_class.append(frechet_distance(*feature_statistics(real_c), *feature_statistics(fake_c)))
    return per_class, _mean(per_class)


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else float("nan")
