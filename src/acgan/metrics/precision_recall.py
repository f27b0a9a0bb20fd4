"""Improved precision and recall (Kynkaanniemi et al. 2019) from k-nearest-neighbour feature manifolds."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def _as_tensor(x: np.ndarray | Tensor) -> Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).to(torch.float32)


def knn_radii(manifold: Tensor, k: int, batch_size: int = 5000) -> Tensor:
    """Distance from each row of manifold (N, D) to its k-th nearest other row."""
    if manifold.shape[0] <= k:
        raise ValueError(f"k={k} needs more than k points, got {manifold.shape[0]}")
    radii = []
    for rows in manifold.split(batch_size):
        dist = torch.cdist(rows, manifold)  # (B, N)
        # The k+1-th smallest, because each point's distance to itself is the smallest (zero).
        radii.append(dist.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)  # (N,)


def coverage_fraction(manifold: Tensor, radii: Tensor, probes: Tensor, batch_size: int = 5000) -> float:
    """Fraction of probes (M, D) that lie within the ball of at least one manifold point."""
    inside = [(torch.cdist(rows, manifold) <= radii).any(dim=1) for rows in probes.split(batch_size)]
    return float(torch.cat(inside).float().mean())


def precision_recall(
    real_feat: np.ndarray | Tensor, fake_feat: np.ndarray | Tensor, k: int = 3, batch_size: int = 5000
) -> tuple[float, float]:
    """Precision: fakes inside the real manifold; recall: reals inside the fake manifold."""
    real, fake = _as_tensor(real_feat), _as_tensor(fake_feat)
    precision = coverage_fraction(real, knn_radii(real, k, batch_size), fake, batch_size)
    recall = coverage_fraction(fake, knn_radii(fake, k, batch_size), real, batch_size)
    return precision, recall
