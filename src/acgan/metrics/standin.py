"""Tiny TorchScript detectors with the two Inception call signatures, for tests and offline smoke runs only.

Their numbers mean nothing about image quality; they only exercise the metric plumbing end to end.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from acgan.metrics.detector import quiet_jit_deprecation


class StandInDetector(nn.Module):
    """Average-pools to a 4x4 grid, then fixed random maps to `feature_dim` features and class logits."""

    def __init__(self, feature_dim: int = 16, num_classes: int = 10, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.proj = nn.Linear(3 * 16, feature_dim)
        self.output = nn.Linear(feature_dim, num_classes)
        with torch.no_grad():
            for p in (*self.proj.parameters(), *self.output.parameters()):
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)

    def forward(self, x: Tensor, return_features: bool = False, no_output_bias: bool = False) -> Tensor:
        """Features (N, feature_dim) or softmax probabilities (N, num_classes) of uint8 (N, 3, H, W)."""
        x = x.to(torch.float32) / 127.5 - 1.0
        pooled = F.adaptive_avg_pool2d(x, 4).flatten(1)  # (N, 48)
        # tanh keeps the features non-linear in the pixels, so their covariance is full rank.
        features = torch.tanh(self.proj(pooled) * 3.0)  # (N, feature_dim)
        if return_features:
            return features
        logits = F.linear(features, self.output.weight) if no_output_bias else self.output(features)
        return torch.softmax(logits, dim=1)


def save_standin_detector(path: Path, feature_dim: int = 16, num_classes: int = 10, seed: int = 0) -> Path:
    """Script a StandInDetector and save it where `load_detector` can read it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet_jit_deprecation():
        torch.jit.save(torch.jit.script(StandInDetector(feature_dim, num_classes, seed)), str(path))
    return path


class StandInFeatures(nn.Module):
    """The features-only signature: float (N, 3, 299, 299) in [-1, 1) -> (N, feature_dim), like default_1.pt."""

    def __init__(self, feature_dim: int = 16, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.proj = nn.Linear(3 * 64, feature_dim)
        with torch.no_grad():
            for p in self.proj.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)

    def forward(self, x: Tensor) -> Tensor:
        """Features of already resized and normalised images."""
        pooled = F.adaptive_avg_pool2d(x, 8).flatten(1)  # (N, 192)
        return torch.tanh(self.proj(pooled) * 3.0)  # (N, feature_dim)


def save_standin_features(path: Path, feature_dim: int = 16, seed: int = 0) -> Path:
    """Script a StandInFeatures and save it where `load_detector` can read it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with quiet_jit_deprecation():
        torch.jit.save(torch.jit.script(StandInFeatures(feature_dim, seed)), str(path))
    return path
