"""Detector speed: the Inception features of 32x32 images through the published TorchScript and its eager copy.

    python benchmarks/detector_speed.py [--detector PATH] [--images 64] [--rounds 3]

Both run the same uint8 images through acgan's Detector (NVlabs preprocessing, CPU_CHUNK images per call),
once with the eager copy of metrics/inception.py and once with the TorchScript file as published, alternating
round by round so that a busy spell of the machine hits both alike. Prints each one's best and median
images/s, the speed-up, and the largest feature difference between the two.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from acgan.metrics import load_detector, resolve_detector_path
from acgan.precision import cpu_name


def _timed(det, images: torch.Tensor) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    feats = det.features(images)
    return images.shape[0] / (time.perf_counter() - start), feats


def main() -> None:
    """Alternate the two forms over --rounds rounds and print images/s of each."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--detector", default=None, help="detector file (default: the one acgan finds in its cache)")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    det = load_detector(resolve_detector_path(args.detector))
    if det.eager is None:
        raise SystemExit(f"{det.name}: no eager copy on this device or for this file; nothing to compare")
    eager = det.eager
    images = torch.randint(0, 256, (args.images, 3, 32, 32), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    rates: dict[str, list[float]] = {"eager": [], "torchscript": []}
    det.features(images[:8])  # first calls of either form pay one-time set-up
    det.eager = None
    det.features(images[:8])
    for _ in range(args.rounds):
        det.eager = eager
        rate, fast = _timed(det, images)
        rates["eager"].append(rate)
        det.eager = None
        rate, scripted = _timed(det, images)
        rates["torchscript"].append(rate)
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}, {args.images} images "
          f"x {args.rounds} rounds")
    for name, r in rates.items():
        print(f"  {name:12s} best {max(r):6.1f}  median {statistics.median(r):6.1f} images/s")
    speedup = statistics.median(rates["eager"]) / statistics.median(rates["torchscript"])
    print(f"  speed-up {speedup:.2f}x (medians); max |feature difference| {(fast - scripted).abs().max().item():.2e}")


if __name__ == "__main__":
    main()
