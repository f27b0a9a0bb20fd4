"""Compute a chosen set of metrics for generated images against a real set, whatever produced the images."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from acgan.config import EVAL_BATCH
from acgan.errors import UserError
from acgan.metrics.cacc import ImageClassifier, classifier_accuracy
from acgan.metrics.cache import cached, stats_path
from acgan.metrics.detector import Detector
from acgan.metrics.fid import feature_statistics, frechet_distance, intra_class_fid
from acgan.metrics.inception_score import inception_score
from acgan.metrics.kid import kernel_inception_distance
from acgan.metrics.msssim import class_diversity
from acgan.metrics.precision_recall import precision_recall
from acgan.storage import is_storage_error, write_error

FakeSource = Callable[[int], Iterator[tuple[Tensor, Tensor]]] | tuple[Tensor, Tensor]

METRICS: dict[str, str] = {
    "fid": "Frechet Inception Distance to the real set (lower is better)",
    "is": "Inception Score, mean and std over 10 splits (higher is better)",
    "kid": "Kernel Inception Distance, unbiased MMD^2 with a cubic kernel (lower is better)",
    "pr": "improved precision (fidelity) and recall (coverage) with k=3 neighbourhoods",
    "ifid": "intra-class FID: FID per class between real and generated images, and its mean",
    "msssim": "mean MS-SSIM of random same-class pairs, generated and real (lower is more diverse)",
    "cacc": "accuracy of a classifier trained on the real data on generated images for their requested class, "
            "overall and per class, beside its accuracy on the real test split (higher is better)",
}
_DETECTOR_METRICS = {"fid", "is", "kid", "pr", "ifid"}
_FEATURE_METRICS = {"fid", "kid", "pr", "ifid"}
# Keys whose value depends on how many generated images went in; they get a "10k"-style tag in tables.
_COUNTED = ("fid", "is", "kid", "precision", "recall", "ifid")
MAX_CACHED_FEATURES = 200_000


def parse_metrics(metrics: Sequence[str] | str) -> list[str]:
    """Validated, de-duplicated metric names from a list or a comma-separated string."""
    names = [m.strip().lower() for m in (metrics.split(",") if isinstance(metrics, str) else metrics)]
    names = list(dict.fromkeys(m for m in names if m))
    unknown = [m for m in names if m not in METRICS]
    if unknown or not names:
        raise UserError(f"unknown metric {','.join(unknown) or '(none given)'}; valid: {','.join(METRICS)}")
    return names


@dataclass
class FakeSet:
    """What one pass over the generated images keeps: features, probabilities, labels, predictions, class pools."""

    features: list[Tensor] = field(default_factory=list)
    probs: list[Tensor] = field(default_factory=list)
    labels: list[Tensor] = field(default_factory=list)
    predicted: list[Tensor] = field(default_factory=list)  # the classifier's class for each image (cacc)
    pools: dict[int, list[Tensor]] = field(default_factory=dict)

    def pool_size(self, c: int) -> int:
        """How many images of class c the MS-SSIM pool holds."""
        return sum(t.shape[0] for t in self.pools.get(c, []))


def _fake_batches(fake_images: FakeSource, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    if isinstance(fake_images, tuple):
        images, labels = fake_images
        for start in range(0, images.shape[0], batch_size):
            yield images[start:start + batch_size], labels[start:start + batch_size]
    else:
        yield from fake_images(batch_size)


def collect_fakes(
    fake_images: FakeSource, detector: Detector | None, want_features: bool, want_probs: bool,
    pool_per_class: int, batch_size: int, classifier: ImageClassifier | None = None,
) -> FakeSet:
    """One streaming pass: detector and classifier outputs for every batch, the first images of each class."""
    out = FakeSet()
    bar = None
    if detector is not None:  # the Inception pass is the slow part: minutes on a CPU
        from tqdm import tqdm

        total = fake_images[0].shape[0] if isinstance(fake_images, tuple) else None
        bar = tqdm(total=total, desc="images scored", unit="img", dynamic_ncols=True)
    for images, labels in _fake_batches(fake_images, batch_size):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"generated images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        labels = torch.as_tensor(labels).long().cpu()
        images = images.cpu()
        if detector is not None and want_features and want_probs:
            feats, probs = detector.features_and_probabilities(images)
            out.features.append(feats)
            out.probs.append(probs)
        elif detector is not None and want_features:
            out.features.append(detector.features(images))
        elif detector is not None and want_probs:
            out.probs.append(detector.probabilities(images))
        if classifier is not None:
            out.predicted.append(classifier(images).argmax(1).cpu())  # (B,)
        out.labels.append(labels)
        # Generated batches are i.i.d., so the first images of a class are as random a sample as any.
        for c in labels.unique().tolist() if pool_per_class else []:
            room = pool_per_class - out.pool_size(c)
            if room > 0:
                out.pools.setdefault(c, []).append(images[labels == c][:room].clone())
        if bar is not None:
            bar.update(images.shape[0])
    if bar is not None:
        bar.close()
    return out


def _real_features_loader(detector: Detector, real_images: Tensor, real_key: str,
                          cache_dir: Path | None) -> Callable[[], np.ndarray]:
    """A memoised getter of the real features, computed once per dataset and detector (with a progress bar)."""
    n = int(real_images.shape[0])
    parts = {"dataset": real_key, "detector": detector.name, "num_images": n, "statistic": "features"}
    # The features are the hours-long part on a CPU; kept on disk up to ~1.6 GB (200k x 2048 float32), so that
    # KID, precision/recall and intra-FID later cost nothing. Larger sets keep only their FID statistics.
    persist = n <= MAX_CACHED_FEATURES

    def compute() -> dict[str, np.ndarray]:
        start = time.perf_counter()
        partial = stats_path(parts, cache_dir).with_suffix(".partial.npy") if cache_dir is not None else None
        feats = detector.features(real_images, progress=f"features of {n} real images (once, then cached)",
                                  partial=partial)
        seconds = time.perf_counter() - start
        print(f"real features: {n} images in {seconds:.0f} s ({n / seconds:.1f} images/s)", file=sys.stderr)
        return {"features": feats.numpy()}

    @functools.cache
    def load() -> np.ndarray:
        return cached(parts, compute, cache_dir if persist else None)["features"]  # (N, D)

    return load


def _real_fid_stats(real_features: Callable[[], np.ndarray], parts: Mapping[str, object],
                    cache_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    def compute() -> dict[str, np.ndarray]:
        mu, sigma = feature_statistics(real_features())
        return {"mu": mu, "sigma": sigma}

    stats = cached({**parts, "statistic": "fid"}, compute, cache_dir)
    return stats["mu"], stats["sigma"]


def _msssim_results(fakes: FakeSet, real_images: Tensor, real_labels: Tensor, num_classes: int,
                    num_pairs: int, seed: int) -> dict[str, float]:
    pool_images = [torch.cat(v) for v in fakes.pools.values()]
    pool_labels = [torch.full((t.shape[0],), c) for c, t in zip(fakes.pools, pool_images, strict=True)]
    if not pool_images:
        raise UserError("MS-SSIM needs generated images, got none")
    fake = class_diversity(torch.cat(pool_images), torch.cat(pool_labels), num_classes, num_pairs, seed)
    real = class_diversity(real_images, real_labels, num_classes, num_pairs, seed)
    out = {"msssim_fake_mean": _mean(fake.values()), "msssim_real_mean": _mean(real.values())}
    out.update({f"msssim_fake_class_{c}": v for c, v in fake.items()})
    out.update({f"msssim_real_class_{c}": v for c, v in real.items()})
    return out


def _mean(values) -> float:
    values = list(values)
    return float(np.mean(values)) if values else float("nan")


@dataclass(frozen=True)
class MetricSettings:
    """Sampling and size knobs of the individual metrics (defaults follow the papers' protocols)."""

    is_splits: int = 10
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = 3
    msssim_pairs: int = 100
    msssim_pool: int = 200
    seed: int = 0


def compute_metrics(
    metrics: Sequence[str], *, fake_images: FakeSource, real_images: Tensor, real_labels: Tensor,
    num_classes: int, detector: Detector | None, real_key: str, cache_dir: Path | None,
    batch_size: int = EVAL_BATCH, settings: MetricSettings | None = None, classifier: ImageClassifier | None = None,
    fake_key: str | None = None,
) -> dict[str, float]:
    """Flat dict of the requested metrics (fid, is_mean, kid_mean, cacc, ...) plus `num_fake` and `num_real`."""
    names, cfg = parse_metrics(metrics), settings or MetricSettings()
    if real_images.dtype != torch.uint8 or real_images.ndim != 4 or len(real_labels) != real_images.shape[0]:
        raise ValueError(f"real images must be uint8 (N, C, H, W) with N labels, got {tuple(real_images.shape)}")
    if detector is None and _DETECTOR_METRICS.intersection(names):
        raise UserError(f"metrics {','.join(m for m in names if m in _DETECTOR_METRICS)} need a feature detector")
    if classifier is None and "cacc" in names:
        raise UserError("metric cacc needs a classifier (train one with `acgan classifier train`)")
    want_features = bool(_FEATURE_METRICS.intersection(names))
    # a second real set (fake_key names it) gets its features from the same resumable cache as the reference
    cached_fakes = fake_key is not None and isinstance(fake_images, tuple) and detector is not None and want_features
    fakes = collect_fakes(fake_images, detector, want_features=want_features and not cached_fakes,
                          want_probs="is" in names, pool_per_class=cfg.msssim_pool if "msssim" in names else 0,
                          batch_size=batch_size, classifier=classifier if "cacc" in names else None)
    fake_labels = torch.cat(fakes.labels).numpy() if fakes.labels else np.zeros(0, np.int64)
    if len(fake_labels) < 2:
        raise UserError(f"metrics need at least 2 generated images, got {len(fake_labels)}")
    real_labels = torch.as_tensor(real_labels).long().cpu()
    results: dict[str, float] = {}
    if detector is not None and _FEATURE_METRICS.intersection(names):
        real_feat = _real_features_loader(detector, real_images, real_key, cache_dir)
        parts = {"dataset": real_key, "detector": detector.name, "num_images": int(real_images.shape[0])}
        fid_stats = functools.partial(_real_fid_stats, real_feat, parts, cache_dir)
        if cached_fakes:
            fake_feat = _real_features_loader(detector, fake_images[0], str(fake_key), cache_dir)()
        else:
            fake_feat = torch.cat(fakes.features).numpy()  # (N_fake, D)
        results.update(_feature_results(names, fake_feat, fake_labels, real_feat, real_labels.numpy(),
                                        fid_stats, num_classes, cfg))
    if "is" in names:
        results["is_mean"], results["is_std"] = inception_score(torch.cat(fakes.probs).numpy(), cfg.is_splits)
    if "cacc" in names and classifier is not None:
        cacc = classifier_accuracy(torch.cat(fakes.predicted), torch.from_numpy(fake_labels), num_classes)
        # The real test accuracy sits beside the overall number: the ceiling a perfect generator would reach.
        results.update({"cacc": cacc.pop("cacc"), "cacc_real_test": float(classifier.test_accuracy), **cacc})
    if "msssim" in names:
        results.update(_msssim_results(fakes, real_images, real_labels, num_classes, cfg.msssim_pairs, cfg.seed))
    results["num_fake"] = float(len(fake_labels))
    results["num_real"] = float(real_images.shape[0])
    return results


def _feature_results(
    names: Sequence[str], fake_feat: np.ndarray, fake_labels: np.ndarray, real_feat: Callable[[], np.ndarray],
    real_labels: np.ndarray, fid_stats: Callable[[], tuple[np.ndarray, np.ndarray]], num_classes: int,
    cfg: MetricSettings,
) -> dict[str, float]:
    """The metrics computed from detector features: fid, kid, pr, ifid."""
    out: dict[str, float] = {}
    if "fid" in names:
        out["fid"] = frechet_distance(*feature_statistics(fake_feat), *fid_stats())
    if "kid" in names:
        out["kid_mean"], out["kid_std"] = kernel_inception_distance(
            real_feat(), fake_feat, cfg.kid_subsets, cfg.kid_subset_size, cfg.seed)
    if "pr" in names:
        out["precision"], out["recall"] = _precision_recall(real_feat(), fake_feat, cfg.pr_k, cfg.seed)
    if "ifid" in names:
        per_class, out["ifid_mean"] = intra_class_fid(real_feat(), real_labels, fake_feat, fake_labels, num_classes)
        out.update({f"ifid_class_{c}": v for c, v in enumerate(per_class)})
    return out


def _precision_recall(real_feat: np.ndarray, fake_feat: np.ndarray, k: int, seed: int) -> tuple[float, float]:
    # k-NN radii shrink as a set grows, so the larger set is subsampled to the smaller one's size
    # (Kynkaanniemi et al. compare equal-sized sets); otherwise recall and precision are skewed.
    n = min(len(real_feat), len(fake_feat))
    rng = np.random.default_rng(seed)
    real = real_feat[np.sort(rng.choice(len(real_feat), n, replace=False))] if len(real_feat) > n else real_feat
    fake = fake_feat[np.sort(rng.choice(len(fake_feat), n, replace=False))] if len(fake_feat) > n else fake_feat
    return precision_recall(real, fake, k=k)


def count_tag(n: int | float) -> str:
    """Short sample count for metric names: 10000 -> '10k', 50000 -> '50k', 2500 -> '2500'."""
    n = int(n)
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def with_sample_count(results: Mapping[str, float]) -> dict[str, float]:
    """Results renamed so count-dependent metrics carry the generated-sample count: fid -> fid10k."""
    tag = count_tag(results.get("num_fake", 0))
    out: dict[str, float] = {}
    for key, value in results.items():
        family, sep, rest = key.partition("_")
        out[f"{family}{tag}{sep}{rest}" if family in _COUNTED else key] = value
    return out


def format_table(results: Mapping[str, float]) -> str:
    """Two aligned columns, metric and value, with sample counts in the names."""
    named = with_sample_count(results)
    width = max((len(k) for k in named), default=0)
    return "\n".join(f"{k:<{width}}  {_format_value(k, v)}" for k, v in named.items())


def _format_value(key: str, v: float) -> str:
    if key.startswith("num_") and math.isfinite(v):
        return str(int(v))
    # KID and near-zero distances live around 1e-4: fixed 4 decimals would print them as 0.0000.
    return f"{v:.4g}" if v != 0 and abs(v) < 1e-2 else f"{v:.4f}"


def write_json(results: Mapping[str, float | str], path: Path) -> None:
    """Write results as JSON atomically (temp file + rename); NaN becomes null so the file stays valid.

    A full or read-only disk is a WriteError: one line naming the file, the reason, the bytes and the free space.
    """
    path = Path(path)
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in results.items()}
    text = json.dumps(clean, indent=2, sort_keys=False) + "\n"
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as e:
        if not is_storage_error(e):
            raise
        raise write_error(path, e, len(text.encode())) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)  # gone after the rename; what a failed write left otherwise
