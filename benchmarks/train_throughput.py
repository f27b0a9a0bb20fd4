"""Training throughput: a seed-style reference loop against acgan's trainer, same nets, same process.

    python benchmarks/train_throughput.py [--data PATH|synthetic] [--steps 40] [--warmup 5] [--json]

(a) `reference`: the way the original implementation trains - a DataLoader over per-image samples
    (PIL image -> float tensor -> normalize, in 2 worker processes), Sigmoid + BCELoss, fp32, and
    `.item()` host syncs every step.
(b) `acgan`: acgan's own step with its defaults - the dataset resident on the device as uint8,
    normalization and flips there, bf16 autocast where the hardware has it, bit-mask dropout,
    statistics accumulated on the device and read once at the end.
Both train the paper's CIFAR-10 nets at batch 100 for --steps steps after --warmup steps.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from acgan.config import ARCHS, DEFAULTS
from acgan.data import EpochSampler, ImageDataset, load_dataset
from acgan.distributed import DistInfo
from acgan.models import Discriminator, Generator
from acgan.precision import autocast, resolve_precision
from acgan.trainer import StepOptions, build_trainer, train_step


class PerImageDataset(torch.utils.data.Dataset):
    """One PIL image per item, transformed per sample like torchvision's ToTensor + Normalize."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images, self.labels = images, labels  # (N, H, W, 3) uint8, (N,)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.images[i])
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (x - 0.5) / 0.5, int(self.labels[i])


def reference_loop(dataset: ImageDataset, steps: int, warmup: int, device: torch.device, batch: int) -> float:
    """Images/s of the seed-style loop (per-image loader, Sigmoid+BCELoss, fp32, .item() every step)."""
    K = dataset.num_classes
    images = dataset.images.permute(0, 2, 3, 1).numpy()
    loader = torch.utils.data.DataLoader(PerImageDataset(images, dataset.labels.numpy()), batch_size=batch,
                                         shuffle=True, num_workers=2, drop_last=True, persistent_workers=True)
    G, D = Generator(DEFAULTS.nz, K).to(device), Discriminator(K).to(device)
    for m in D.modules():  # the seed used nn.Dropout (bernoulli_ masks)
        for name, child in m.named_children():
            if type(child).__name__ == "BitDropout":
                setattr(m, name, nn.Dropout(0.5))
    opt_G = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_D = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce, ce = nn.BCELoss(), nn.CrossEntropyLoss()
    done, t0 = 0, 0.0
    while done < warmup + steps:
        for x, y in loader:
            if done == warmup:
                _sync(device)
                t0 = time.perf_counter()
            if done == warmup + steps:
                break
            x, y = x.to(device), y.to(device)
            D.zero_grad()
            src, cls = D(x)
            err_real = bce(torch.sigmoid(src), torch.ones_like(src)) + ce(cls, y)
            err_real.backward()
            _ = torch.sigmoid(src).mean().item()
            y_fake = torch.randint(0, K, (batch,), device=device)
            fake = G(torch.randn(batch, DEFAULTS.nz, device=device), y_fake)
            src, cls = D(fake.detach())
            err_fake = bce(torch.sigmoid(src), torch.zeros_like(src)) + ce(cls, y_fake)
            err_fake.backward()
            _ = (torch.sigmoid(src).mean().item(), (err_real + err_fake).item())
            opt_D.step()
            G.zero_grad()
            src, cls = D(fake)
            err_g = bce(torch.sigmoid(src), torch.ones_like(src)) + ce(cls, y_fake)
            err_g.backward()
            _ = torch.sigmoid(src).mean().item()
            opt_G.step()
            done += 1
    _sync(device)
    return steps * batch / (time.perf_counter() - t0)


def acgan_loop(dataset: ImageDataset, steps: int, warmup: int, device: torch.device, batch: int,
               precision: str, arch: str = "paper", compile_mode: str = "off") -> float:
    """Images/s of acgan's own training step with the arch's default recipe."""
    config = DEFAULTS.replace(batch_size=batch, precision=precision, arch=arch, compile=compile_mode).resolved()
    tr = build_trainer(config, dataset.num_classes, device, DistInfo())
    sampler = EpochSampler(dataset, batch, device=device, seed=0)
    amp = autocast(device, resolve_precision(precision, device))
    opts = StepOptions.from_config(config, dataset.num_classes)
    acc = torch.zeros((), device=device)
    done, t0, epoch = 0, 0.0, 0
    while done < warmup + steps:
        for x_real, y_real in sampler.epoch(epoch):
            if done == warmup:
                _sync(device)
                t0 = time.perf_counter()
            if done == warmup + steps:
                break
            acc += train_step(tr, x_real, y_real, opts, amp)["loss_G"]
            done += 1
        epoch += 1
    acc.item()  # the one host sync
    return steps * batch / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    """Run both loops and print images/s, the ratio, peak memory, device and precision."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_data = Path(__file__).resolve().parents[2] / "shared" / "cifar10" / "cifar-10-python.tar.gz"
    ap.add_argument("--data", default=str(default_data) if default_data.exists() else "synthetic",
                    help="CIFAR-10 directory or .tar.gz, or 'synthetic' (random data of the same shape)")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=20)  # oneDNN builds its bf16 kernels over the first steps
    ap.add_argument("--batch_size", type=int, default=100)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"))
    ap.add_argument("--arch", default="paper", choices=ARCHS, help="acgan's nets (the reference is always paper)")
    ap.add_argument("--compile", default="off", choices=("off", "on"))
    ap.add_argument("--skip_reference", action="store_true")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    device = torch.device(a.device)
    torch.manual_seed(0)
    if a.data == "synthetic":
        gen = torch.Generator().manual_seed(0)
        dataset = ImageDataset(torch.randint(0, 256, (50_000, 3, 32, 32), dtype=torch.uint8, generator=gen),
                               torch.randint(0, 10, (50_000,), generator=gen), tuple(f"c{i}" for i in range(10)))
    else:
        dataset = load_dataset("cifar10", a.data)
    precision = resolve_precision(a.precision, device)
    # acgan first: the reference's DataLoader worker processes would otherwise linger beside it
    ours = acgan_loop(dataset, a.steps, a.warmup, device, a.batch_size, precision, a.arch, a.compile)
    ref = None if a.skip_reference else reference_loop(dataset, a.steps, a.warmup, device, a.batch_size)
    result = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else "cpu", "threads": torch.get_num_threads(), "precision": precision, "arch": a.arch,
              "compile": a.compile, "batch_size": a.batch_size,
              "steps": a.steps, "data": "synthetic" if a.data == "synthetic" else "cifar10",
              "reference_images_per_s": None if ref is None else round(ref, 1),
              "acgan_images_per_s": round(ours, 1), "ratio": None if ref is None else round(ours / ref, 2),
              "peak_rss_mb": round(_peak_rss_mb()),
              "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else None}
    if a.json:
        print(json.dumps(result))
        return
    print(f"device {result['device_name']} ({result['threads']} threads), data {result['data']}, "
          f"batch {a.batch_size}, {a.steps} steps after {a.warmup} warm-up")
    if ref is not None:
        print(f"reference (seed-style, fp32):  {ref:8.1f} images/s")
    label = f"acgan ({a.arch}, {precision}{', compiled' if a.compile == 'on' else ''}):"
    print(f"{label:<30}{ours:8.1f} images/s")
    if ref is not None:
        print(f"ratio: {ours / ref:.2f}x")
    print(f"peak RSS {result['peak_rss_mb']} MB" + (f", peak CUDA {result['peak_cuda_mb']} MB"
                                                   if device.type == "cuda" else ""))


if __name__ == "__main__":
    sys.exit(main())
