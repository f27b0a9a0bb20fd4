"""A fast CNN classifier of the real data, trained once per dataset: the judge behind the `cacc` metric."""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from acgan.checkpoint import atomic_save, load_weights
from acgan.config import CLASSIFIER_DEFAULTS, EVAL_BATCH
from acgan.data import ONE_SPLIT_DATASETS, ImageDataset, load_dataset, read_manifest, to_float
from acgan.device import resolve_device
from acgan.errors import UserError
from acgan.metrics.cacc import classifier_accuracy
from acgan.metrics.cache import default_cache_dir
from acgan.precision import autocast, resolve_precision

EPOCHS, BATCH_SIZE = CLASSIFIER_DEFAULTS.epochs, CLASSIFIER_DEFAULTS.batch_size  # defaults live in config.py
LR, WIDTH = CLASSIFIER_DEFAULTS.lr, CLASSIFIER_DEFAULTS.width
WEIGHT_DECAY = 5e-4
LABEL_SMOOTHING = 0.1
PAD = 4  # random crops are taken from images reflect-padded by this many pixels
HOLDOUT = 0.1  # share of a class folder held out as its test split (folders have none)
FORMAT = 1


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class _Residual(nn.Module):
    """x + two conv-BN-ReLU layers at constant width."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv_bn(channels, channels), _conv_bn(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        """Same shape in and out."""
        return x + self.body(x)


class ClassifierNet(nn.Module):
    """ResNet-9-style CNN (Page's DAWNBench CIFAR-10 net at half width); global pooling fits any image size."""

    def __init__(self, num_classes: int, width: int = WIDTH) -> None:
        super().__init__()
        self.arch = {"num_classes": num_classes, "width": width}  # constructor arguments, saved with the weights
        w = width
        self.features = nn.Sequential(
            _conv_bn(3, w),  # (B, w, S, S)
            _conv_bn(w, 2 * w), nn.MaxPool2d(2), _Residual(2 * w),  # (B, 2w, S/2, S/2)
            _conv_bn(2 * w, 4 * w), nn.MaxPool2d(2),  # (B, 4w, S/4, S/4)
            _conv_bn(4 * w, 8 * w), nn.MaxPool2d(2), _Residual(8 * w),  # (B, 8w, S/8, S/8)
            nn.AdaptiveMaxPool2d(1), nn.Flatten(),  # (B, 8w)
        )
        self.head = nn.Linear(8 * w, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, K) of images in [-1, 1] (B, 3, S, S)."""
        # Small initial logits (Page's 1/8 scale) keep the first high-lr steps from saturating the softmax.
        return self.head(self.features(x)) * 0.125


@dataclass(frozen=True)
class Classifier:
    """A trained net with what it was trained on; calling it maps uint8 images (N, 3, S, S) to logits (N, K)."""

    net: ClassifierNet
    class_names: tuple[str, ...]
    dataset_key: str  # content_hash() of the train split it learned from
    image_size: int
    test_accuracy: float
    device: torch.device

    def __call__(self, images: Tensor) -> Tensor:
        """Logits (N, K) float32 on the CPU."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != self.image_size:
            raise ValueError(f"the classifier takes uint8 (N, 3, {self.image_size}, {self.image_size}) images, "
                             f"got {images.dtype} {tuple(images.shape)}")
        return class_logits(self.net, images, self.device)


def _layout(device: torch.device) -> torch.memory_format:
    """Channels-last on CUDA (tensor cores want it); plain NCHW on CPU, where channels-last measured ~4x slower."""
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def _normalise(images: Tensor) -> Tensor:
    """uint8 (B, 3, S, S) -> float32 in [-1, 1] (B, 3, S, S), in the layout the device convolves fastest."""
    return to_float(images).contiguous(memory_format=_layout(images.device))


def augment(x: Tensor, shifts: Tensor, flips: Tensor) -> Tensor:
    """Random crops of the reflect-padded batch and horizontal flips, as one gather: x (B, 3, S, S) -> same shape."""
    B, _, S, _ = x.shape
    padded = F.pad(x, (PAD, PAD, PAD, PAD), mode="reflect")  # (B, 3, S+2P, S+2P)
    span = torch.arange(S, device=x.device)
    rows = shifts[0][:, None] + span  # (B, S) source row of each output row
    cols = shifts[1][:, None] + span  # (B, S)
    cols = torch.where(flips[:, None], cols.flip(1), cols)  # a flip reads the columns backwards
    batch = torch.arange(B, device=x.device)[:, None, None]
    # Advanced indices around the channel slice put the channels last: (B, S, S, 3), i.e. channels-last memory.
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (B, 3, S, S)
    return out.contiguous(memory_format=_layout(x.device))


@torch.no_grad()
def class_logits(net: nn.Module, images: Tensor, device: torch.device, batch_size: int = EVAL_BATCH) -> Tensor:
    """Logits (N, K) float32 on the CPU of uint8 images, in eval mode and fp32 so repeated runs agree exactly."""
    was_training = net.training
    net.eval()
    try:
        return torch.cat([net(_normalise(chunk.to(device))).float().cpu() for chunk in images.split(batch_size)])
    finally:
        net.train(was_training)


def accuracy(net: nn.Module, dataset: ImageDataset, device: torch.device) -> float:
    """Share of the images classified correctly (computed exactly as the `cacc` metric does)."""
    predicted = class_logits(net, dataset.images, device).argmax(1)
    return classifier_accuracy(predicted, dataset.labels, dataset.num_classes)["cacc"]


def _one_cycle(total_steps: int) -> Callable[[int], float]:
    """lr factor per step: up linearly over the first quarter, then linearly down towards 0 (one cycle)."""
    # Written out rather than OneCycleLR, which divides by zero on the few-step runs of tests and tiny sets.
    peak = max(1, round(total_steps * 0.25))
    return lambda step: (step + 1) / peak if step < peak else max(total_steps - step, 0) / max(total_steps - peak, 1)


def _train_epoch(net: nn.Module, opt: torch.optim.Optimizer, sched: Any, data: tuple[Tensor, Tensor],
                 batch_size: int, gen: torch.Generator, precision: str) -> tuple[float, float]:
    """One pass over the shuffled, augmented train images; returns mean loss and accuracy (one host sync)."""
    images, labels = data
    device, n = images.device, images.shape[0]
    steps = n // batch_size  # drop the last partial batch: a tiny batch gives BatchNorm noisy statistics
    # All of an epoch's randomness drawn at once on the CPU generator and moved in one copy.
    order = torch.randperm(n, generator=gen).to(device)
    shifts = torch.randint(0, 2 * PAD + 1, (2, n), generator=gen).to(device)
    flips = (torch.rand(n, generator=gen) < 0.5).to(device)
    loss_sum = torch.zeros((), device=device)
    hits = torch.zeros((), dtype=torch.long, device=device)
    net.train()
    for s in range(steps):
        batch = slice(s * batch_size, (s + 1) * batch_size)
        idx = order[batch]
        x = augment(_normalise(images[idx]), shifts[:, batch], flips[batch])  # (B, 3, S, S)
        y = labels[idx]  # (B,)
        with autocast(device, precision):
            logits = net(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=LABEL_SMOOTHING)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum += loss.detach()
        hits += (logits.argmax(1) == y).sum()
    return loss_sum.item() / steps, hits.item() / (steps * batch_size)


def train_classifier(
    dataset: ImageDataset, test: ImageDataset | None, *, epochs: int = EPOCHS, batch_size: int = BATCH_SIZE,
    lr: float = LR, seed: int = 0, device: torch.device, width: int = WIDTH, precision: str = "auto",
    log: Callable[[str], None] | None = print,
) -> tuple[ClassifierNet, float]:
    """Train a ClassifierNet (SGD + one-cycle, crops and flips); return it in eval mode and its test accuracy."""
    if epochs < 1 or batch_size < 1 or lr <= 0 or width < 1:
        raise UserError(f"need epochs, batch size, lr and width > 0, got {epochs}, {batch_size}, {lr}, {width}")
    if len(dataset) < batch_size:
        raise UserError(f"the dataset has {len(dataset)} images, fewer than one batch of {batch_size}: lower "
                        "--batch_size")
    with torch.random.fork_rng(devices=[]):  # seeded init without moving the caller's global RNG
        torch.manual_seed(seed)
        net = ClassifierNet(dataset.num_classes, width)
    net = net.to(device, memory_format=_layout(device))
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _one_cycle(epochs * (len(dataset) // batch_size)))
    data = (dataset.images.to(device), dataset.labels.to(device))  # (N, 3, S, S) uint8, (N,): on the device once
    gen = torch.Generator().manual_seed(seed)
    precision = resolve_precision(precision, device)
    test_acc = math.nan
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        loss, train_acc = _train_epoch(net, opt, sched, data, batch_size, gen, precision)
        test_acc = accuracy(net, test, device) if test is not None else math.nan
        if log is not None:
            log(f"epoch {epoch}/{epochs}  loss {loss:.4f}  train acc {train_acc:.4f}  test acc {test_acc:.4f}  "
                f"({time.perf_counter() - start:.1f} s)")
    return net.eval(), test_acc


def split_holdout(dataset: ImageDataset, fraction: float = HOLDOUT, seed: int = 0) -> tuple[ImageDataset, ImageDataset]:
    """(train, test): a fixed random share of the images held out, for datasets that come without a test split."""
    n_test = max(1, round(len(dataset) * fraction))
    if len(dataset) - n_test < 1:
        raise UserError(f"{len(dataset)} images are too few to hold out a test split")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    part = lambda idx: ImageDataset(dataset.images[idx], dataset.labels[idx], dataset.class_names)  # noqa: E731
    return part(order[n_test:]), part(order[:n_test])


def default_classifier_path(dataset_key: str) -> Path:
    """Where `acgan classifier train` files the classifier of a train set, and where `cacc` looks for it."""
    return default_cache_dir() / "classifiers" / f"{dataset_key[:16]}.pt"


def save_classifier(net: ClassifierNet, path: Path, *, class_names: tuple[str, ...], dataset_key: str,
                    image_size: int, test_accuracy: float, settings: dict[str, Any] | None = None) -> Path:
    """Write weights and plain metadata atomically; an existing file is never replaced."""
    path = Path(path)
    if path.exists():
        raise UserError(f"{path} already exists: delete it or choose another --out")
    state = {
        "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "arch": dict(net.arch), "class_names": list(class_names), "dataset_key": dataset_key,
        "image_size": int(image_size), "test_accuracy": float(test_accuracy), "format": FORMAT,
        "settings": dict(settings or {}),  # how it was trained, for the record
    }
    atomic_save(state, path)
    return path


def load_classifier(path: str | Path, device: torch.device) -> Classifier:
    """A saved classifier on device, read with weights_only; a missing, foreign or damaged file is a UserError."""
    path = Path(path)
    state = load_weights(path, "classifier")
    _check_layout(state, path)
    net = ClassifierNet(**state["arch"])
    try:
        net.load_state_dict(state["state_dict"])
    except RuntimeError:
        raise UserError(f"{path} is damaged: its weights do not fit a classifier with {state['arch']}") from None
    return Classifier(net.to(device, memory_format=_layout(device)).eval(), tuple(state["class_names"]),
                      state["dataset_key"], state["image_size"], float(state["test_accuracy"]), device)


def _check_layout(state: Any, path: Path) -> None:
    """Refuse a file that unpickles but is not a classifier of ours, before anything indexes into it."""
    required = ("state_dict", "arch", "class_names", "dataset_key", "image_size", "test_accuracy", "format")
    if not isinstance(state, dict) or any(k not in state for k in required):
        raise UserError(f"{path} is not an acgan classifier (missing {', '.join(required)})")
    if state["format"] != FORMAT:
        raise UserError(f"{path} has classifier format {state['format']!r}; this version reads format {FORMAT}")
    arch, names = state["arch"], state["class_names"]
    arch_ok = (isinstance(arch, dict) and set(arch) == {"num_classes", "width"}
               and all(type(v) is int and v > 0 for v in arch.values()))
    names_ok = isinstance(names, list) and all(isinstance(n, str) for n in names)
    weights = state["state_dict"]
    weights_ok = isinstance(weights, dict) and all(isinstance(v, Tensor) for v in weights.values())
    fields_ok = (type(state["image_size"]) is int and isinstance(state["dataset_key"], str)
                 and isinstance(state["test_accuracy"], (int, float)))
    if not (arch_ok and names_ok and weights_ok and fields_ok and len(names) == arch["num_classes"]):
        raise UserError(f"{path} is damaged: its arch, class_names, weights or metadata have the wrong type")


def train_command(args: argparse.Namespace) -> int:
    """`acgan classifier train`: train the cacc judge of a dataset and file it where `cacc` looks."""
    def refuse_existing(out: Path) -> None:  # checked before training: minutes of work must not end in a refusal
        if out.exists():
            raise UserError(f"{out} already exists: delete it or choose another path with --out")

    if min(args.epochs, args.batch_size, args.width) < 1 or args.lr <= 0:
        raise UserError("--epochs, --batch_size, --width and --lr must be positive")
    if args.out is not None:
        refuse_existing(args.out)
    if args.image_size is None:  # a prepared dataset's own size, else CIFAR's
        args.image_size = read_manifest(args.root_dir)["image_size"] if args.dataset == "prepared" else 32
    subset = {"classes": args.classes, "class_names_file": args.class_names_file}
    data = load_dataset(args.dataset, args.root_dir, split="train", image_size=args.image_size, **subset,
                        num_workers=args.num_workers, download=args.download)
    dataset_key = data.content_hash()  # what `acgan evaluate` and training look the classifier up by
    out = args.out or default_classifier_path(dataset_key)
    refuse_existing(out)
    if args.dataset in ONE_SPLIT_DATASETS:  # hold a tenth out
        train_set, test_set = split_holdout(data)
    else:
        train_set = data
        test_set = load_dataset(args.dataset, args.root_dir, split="test", image_size=args.image_size, **subset)
    device = resolve_device(args.device)
    print(f"training a classifier on {len(train_set)} {args.dataset} images ({train_set.num_classes} classes, "
          f"{train_set.image_size}px) on {device}; testing on {len(test_set)}")
    start = time.perf_counter()
    net, accuracy = train_classifier(train_set, test_set, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                     seed=args.seed, device=device, width=args.width, precision=args.precision)
    settings = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "width", "seed", "precision")}
    save_classifier(net, out, class_names=data.class_names, dataset_key=dataset_key, image_size=data.image_size,
                    test_accuracy=accuracy, settings={"dataset": args.dataset, **settings})
    print(f"test accuracy {accuracy:.4f} on {len(test_set)} images after {time.perf_counter() - start:.0f} s")
    print(f"wrote {out}")
    return 0
