"""Classifier accuracy (`cacc`): how often a classifier trained on real data sees the class G was asked for."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class ImageClassifier(Protocol):
    """What `cacc` needs: uint8 images (N, 3, H, W) -> logits (N, K), and the accuracy on the real test split."""

    test_accuracy: float

    def __call__(self, images: Tensor) -> Tensor: ...


def classifier_accuracy(predicted: Tensor, requested: Tensor, num_classes: int) -> dict[str, float]:
    """Overall accuracy `cacc` (over images) and per class `cacc_class_<c>` (NaN for a class with no images)."""
    predicted, requested = predicted.long().cpu().flatten(), requested.long().cpu().flatten()
    if predicted.shape != requested.shape or len(requested) == 0:
        raise ValueError(f"need as many predictions as requested labels (> 0), got {len(predicted)} and "
                         f"{len(requested)}")
    hit = predicted == requested  # (N,) bool
    per_class_hits = torch.bincount(requested[hit], minlength=num_classes)  # (K,)
    per_class_count = torch.bincount(requested, minlength=num_classes)  # (K,)
    # Integer counts, divided once in Python: the same hits give the same float whoever computes them.
    out = {"cacc": int(hit.sum()) / len(requested)}
    for c in range(num_classes):
        n = int(per_class_count[c])
        out[f"cacc_class_{c}"] = int(per_class_hits[c]) / n if n else float("nan")
    return out
