"""What bf16 does to FID: the same CIFAR-10 images through the eager Inception in fp32 and in bf16.

    python benchmarks/detector_bf16.py [--root_dir ../shared/cifar10/cifar-10-python.tar.gz] [--images 2000]

Three sets of --images each: training images, test images, and other test images blurred (3x3 mean) with
Gaussian noise (sigma 12 pixel levels), a stand-in for a weak generator. Prints each precision's images/s,
FID(train, test) and FID(train, blurred) in each precision, and the FID between the fp32 and the bf16
features of the same images: what the precision alone moves. With a few thousand images these FIDs carry a
large small-sample bias; only the differences between the precisions are the point.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from acgan.data import load_dataset
from acgan.metrics import load_detector, resolve_detector_path
from acgan.metrics.fid import feature_statistics, frechet_distance
from acgan.precision import cpu_name


def _sets(root_dir: str, n: int) -> dict[str, torch.Tensor]:
    train = load_dataset("cifar10", root_dir, split="train").images[:n]
    test = load_dataset("cifar10", root_dir, split="test").images
    gen = torch.Generator().manual_seed(0)
    blurred = F.avg_pool2d(test[n:2 * n].float(), 3, 1, 1, count_include_pad=False)
    blurred = (blurred + 12 * torch.randn(blurred.shape, generator=gen)).round().clamp(0, 255).to(torch.uint8)
    return {"train": train, "test": test[:n], "blurred": blurred}


def _fid(a: np.ndarray, b: np.ndarray) -> float:
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


def main() -> None:
    """Features of the three sets in both precisions, then the FIDs."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root_dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "cifar10"
                                              / "cifar-10-python.tar.gz"))
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--detector", default=None, help="detector file (default: the one acgan finds in its cache)")
    args = ap.parse_args()
    sets = _sets(args.root_dir, args.images)
    path = resolve_detector_path(args.detector)
    feats: dict[str, dict[str, np.ndarray]] = {}
    print(f"{cpu_name()}, {torch.get_num_threads()} threads, {args.images} images per set")
    for precision in ("bf16", "fp32"):
        det = load_detector(path, precision=precision)
        start = time.perf_counter()
        feats[precision] = {k: det.features(v).double().numpy() for k, v in sets.items()}
        rate = 3 * args.images / (time.perf_counter() - start)
        print(f"  {precision}: {rate:.1f} images/s", flush=True)
    for other in ("test", "blurred"):
        print(f"  FID(train, {other}): fp32 {_fid(feats['fp32']['train'], feats['fp32'][other]):.4f}, "
              f"bf16 {_fid(feats['bf16']['train'], feats['bf16'][other]):.4f}")
    for name in sets:
        shift = _fid(feats["fp32"][name], feats["bf16"][name])
        print(f"  FID(fp32, bf16 features of the same {name} images): {shift:.4f}")


if __name__ == "__main__":
    main()
