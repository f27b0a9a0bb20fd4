"""Inception Score (Salimans et al. 2016): exp E_x KL(p(y|x) || p(y)), over splits as the original code."""

from __future__ import annotations

import numpy as np
from scipy.special import xlogy


def inception_score(probs: np.ndarray, num_splits: int = 10) -> tuple[float, float]:
    """Mean and standard deviation over `num_splits` equal splits of class probabilities (N, C)."""
    p = np.asarray(probs, dtype=np.float64)
    n = p.shape[0]
    if p.ndim != 2 or n < num_splits or num_splits < 1:
        raise ValueError(f"need probabilities (N >= num_splits={num_splits}, C), got {p.shape}")
    scores = []
    for i in range(num_splits):
        part = p[i * n // num_splits:(i + 1) * n // num_splits]  # (n / splits, C)
        marginal = part.mean(axis=0, keepdims=True)  # (1, C)
        # xlogy makes 0 * log 0 = 0, so confident one-hot predictions do not turn into NaN.
        kl = (xlogy(part, part) - xlogy(part, marginal)).sum(axis=1)  # (n / splits,)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))
