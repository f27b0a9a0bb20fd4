"""Training throughput: a seed-style reference loop against acgan's trainer, same nets, same process.

    python benchmarks/train_throughput.py [--data PATH|synthetic] [--steps 60] [--warmup 20] [--json]
    python benchmarks/train_throughput.py --all_precisions --skip_reference   # auto beside every fixed one

(a) `reference`: the way the original implementation trains - a DataLoader over per-image samples
    (PIL image -> float tensor -> normalize, in 2 worker processes), Sigmoid + BCELoss, fp32, and
    `.item()` host syncs every step.
(b) `acgan`: acgan's own step with its defaults - the dataset resident on the device as uint8,
    normalization and flips there, the precision `--precision auto` measures fastest on this machine,
    bit-mask dropout, statistics accumulated on the device and read once at the end.
Both train the paper's CIFAR-10 nets at batch 100 for --steps steps after --warmup steps.

It also prints the machine's limit for the step: the best dense matmul rate measured here (fp32 or bf16,
2048^2) divided by the FLOPs of one training iteration per image (counted by FlopCounterMode on acgan's
step), and acgan's fraction of that limit.
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
from acgan.metrics.cache import default_cache_dir
from acgan.models import Discriminator, Generator
from acgan.precision import (
    LAYOUTS,
    autocast,
    choose_precision,
    cpu_name,
    describe_choice,
    hopeless_precisions,
    probe_key,
    resolve_precision,
)
from acgan.trainer import StepOptions, build_trainer, step_timer, train_step


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
               precision: str, arch: str = "paper", compile_mode: str = "off",
               memory_format: torch.memory_format = torch.contiguous_format) -> float:
    """Images/s of acgan's own training step with the arch's default recipe."""
    config = DEFAULTS.replace(batch_size=batch, precision=precision, arch=arch, compile=compile_mode).resolved()
    tr = build_trainer(config, dataset.num_classes, device, DistInfo(), memory_format=memory_format)
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


def matmul_gflops(precision: str, device: torch.device, n: int = 2048, repeats: int = 10) -> float:
    """Dense n x n matmul rate in GFLOP/s at this precision: the best of `repeats` calls (the machine's ceiling)."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, device=device, generator=gen).to(dtype)
    b = torch.randn(n, n, device=device, generator=gen).to(dtype)
    for _ in range(2):
        a @ b
    best = float("inf")
    for _ in range(repeats):  # the fastest call, not the mean: a shared VM's busy spells are not the machine's limit
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def usable_precisions(device: torch.device) -> dict[str, float | None]:
    """Each precision with its matmul slowdown against fp32 on a CPU, None where it is worth timing."""
    # bf16 on a CPU without native bf16 runs its matmuls tens of times slower: timing training steps or a 2048^2
    # matmul in it would take most of an hour and say only what this one small matmul already says
    hopeless = hopeless_precisions(("fp32", "bf16")) if device.type == "cpu" else {}
    return {p: hopeless.get(p) for p in ("fp32", "bf16")}


def layout_ab(dataset: ImageDataset, rounds: int, steps: int, warmup: int, device: torch.device, batch: int,
              precision: str, arch: str) -> dict[str, list[float]]:
    """Images/s of acgan's step with NCHW and with channels_last nets, alternating, `rounds` runs of each."""
    layouts = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
    rates: dict[str, list[float]] = {name: [] for name in layouts}
    for _ in range(rounds):  # alternating, so that a busy spell of a shared machine hits both alike
        for name, layout in layouts.items():
            rates[name].append(acgan_loop(dataset, steps, warmup, device, batch, precision, arch,
                                          memory_format=layout))
    return rates


def step_gflop_per_image(arch: str, batch: int, num_classes: int, device: torch.device) -> float:
    """FLOPs of one training iteration (D and G updates, forward and backward) per image, counted, in GFLOP."""
    from torch.utils.flop_counter import FlopCounterMode

    config = DEFAULTS.replace(batch_size=batch, arch=arch).resolved()
    with torch.random.fork_rng(devices=[]):
        tr = build_trainer(config, num_classes, device, DistInfo())
        x, y = torch.rand(batch, 3, 32, 32, device=device) * 2 - 1, torch.arange(batch, device=device) % num_classes
        with FlopCounterMode(display=False) as counter:
            train_step(tr, x, y, StepOptions.from_config(config, num_classes), autocast(device, "fp32"))
    return counter.get_total_flops() / batch / 1e9


def auto_precision(arch: str, batch: int, num_classes: int, device: torch.device) -> tuple[str, str]:
    """The precision and layout `acgan train --precision auto` picks for these nets here (measured once, cached)."""
    config = DEFAULTS.replace(batch_size=batch, arch=arch).resolved()
    key = probe_key(device=device.type, arch=arch, batch_size=batch, nz=config.nz, image_size=config.image_size,
                    num_classes=num_classes, d_dropout=config.d_dropout)
    precision, layout, times, measured = choose_precision("auto", device, key, default_cache_dir(),
                                                          step_timer(config, num_classes, device))
    if times:
        print(describe_choice(precision, layout, times, measured, default_cache_dir()))
    return precision, layout


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
    ap.add_argument("--all_precisions", action="store_true", help="also time every fixed precision")
    ap.add_argument("--layout_ab", type=int, default=0, metavar="ROUNDS",
                    help="also time NCHW against channels_last nets, alternating, ROUNDS runs of each")
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
    precision, layout = auto_precision(a.arch, a.batch_size, dataset.num_classes, device) if a.precision == "auto" \
        else (resolve_precision(a.precision, device), "nchw")
    # acgan first: the reference's DataLoader worker processes would otherwise linger beside it
    ours = acgan_loop(dataset, a.steps, a.warmup, device, a.batch_size, precision, a.arch, a.compile,
                      LAYOUTS[layout])
    slowdown = usable_precisions(device)
    fixed = {p: round(acgan_loop(dataset, a.steps, a.warmup, device, a.batch_size, p, a.arch, a.compile,
                                 LAYOUTS[layout]), 1)
             for p, slow in slowdown.items() if slow is None} if a.all_precisions else {}
    layouts = layout_ab(dataset, a.layout_ab, a.steps, a.warmup, device, a.batch_size, precision, a.arch)
    ref = None if a.skip_reference else reference_loop(dataset, a.steps, a.warmup, device, a.batch_size)
    rates = {p: matmul_gflops(p, device) for p, slow in slowdown.items() if slow is None}
    gflop = step_gflop_per_image(a.arch, a.batch_size, dataset.num_classes, device)
    limit = max(rates.values()) / gflop
    result = {"device": str(device), "device_name": torch.cuda.get_device_name(device) if device.type == "cuda"
              else cpu_name(), "threads": torch.get_num_threads(), "precision": precision, "layout": layout,
              "arch": a.arch,
              "compile": a.compile, "batch_size": a.batch_size,
              "steps": a.steps, "data": "synthetic" if a.data == "synthetic" else "cifar10",
              "reference_images_per_s": None if ref is None else round(ref, 1),
              "acgan_images_per_s": round(ours, 1), "ratio": None if ref is None else round(ours / ref, 2),
              "fixed_precision_images_per_s": fixed,
              "unusable_precisions": {p: round(slow, 1) for p, slow in slowdown.items() if slow is not None},
              "layout_images_per_s": {k: [round(v, 1) for v in vs] for k, vs in layouts.items()} if a.layout_ab else {},
              "matmul_gflops": {p: round(r, 1) for p, r in rates.items()}, "step_gflop_per_image": round(gflop, 4),
              "limit_images_per_s": round(limit, 1), "fraction_of_limit": round(ours / limit, 3),
              "peak_rss_mb": round(_peak_rss_mb()),
              "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else None}
    if a.json:
        print(json.dumps(result))
        return
    print(f"device {result['device_name']} ({result['threads']} threads), data {result['data']}, "
          f"batch {a.batch_size}, {a.steps} steps after {a.warmup} warm-up")
    if ref is not None:
        print(f"reference (seed-style, fp32):  {ref:8.1f} images/s")
    label = f"acgan ({a.arch}, {precision}, {layout}{', compiled' if a.compile == 'on' else ''}):"
    print(f"{label:<36}{ours:8.1f} images/s")
    for p, ips in fixed.items():
        print(f"{'acgan (' + a.arch + ', ' + p + ' fixed):':<36}{ips:8.1f} images/s")
    for name, runs in result["layout_images_per_s"].items():
        print(f"{'acgan (' + precision + ', ' + name + '):':<36}{sorted(runs)[len(runs) // 2]:8.1f} images/s "
              f"(median of {', '.join(map(str, runs))})")
    if ref is not None:
        print(f"ratio: {ours / ref:.2f}x")
    for p, slow in result["unusable_precisions"].items():
        print(f"{p}: not timed, its matmuls run {slow:.0f}x slower than fp32 here")
    figures = ", ".join(f"{p} {r:.0f}" for p, r in rates.items())
    print(f"limit: best matmul {max(rates.values()):.0f} GFLOP/s ({figures}) / {gflop:.3f} GFLOP per image = "
          f"{limit:.0f} images/s; acgan reaches {ours / limit:.2f} of it")
    print(f"peak RSS {result['peak_rss_mb']} MB" + (f", peak CUDA {result['peak_cuda_mb']} MB"
                                                   if device.type == "cuda" else ""))


if __name__ == "__main__":
    sys.exit(main())
