"""Frozen training configuration: the only place defaults live; saved to and read from config.json."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from acgan.errors import UserError

DATASETS = ("cifar10", "cifar100", "folder", "prepared", "shapes")
PRECISIONS = ("auto", "fp32", "bf16")
COMPILE_MODES = ("auto", "on", "off")
STREAM_MODES = ("auto", "on", "off")
# --stream auto keeps the whole dataset on the training device while it takes at most this share of the device's
# memory (a GPU's own; for a CPU, the host's RAM, which page cache, other ranks and workers share), and else
# streams batches from the host. 2.5 GB of 64x64 images on a 24 GB host streams; CIFAR-10 (150 MB) never does.
RESIDENT_SHARE = {"cuda": 0.25, "cpu": 0.05}
ON_NAN = ("stop", "rollback")
RECIPES = ("default", "tuned")
SOURCE_LOSSES = ("bce", "hinge")
CLASS_LOSSES = ("ce", "ce_real", "d2dce", "tac", "adc")
TWIN_CLASS_LOSSES = ("tac", "adc")  # D's class head has 2K outputs: real class c, and generated class c
G_CONDITIONING = ("concat", "cbn")
DIFFAUG_POLICIES = ("color", "translation", "cutout")
EXPORT_FORMATS = ("safetensors", "torchscript", "onnx")
SERVE_HOST, SERVE_PORT = "127.0.0.1", 8000  # this machine only, unless --host says otherwise
D2D_EMBED_DIM = 512  # ReACGAN's embedding size for the data-to-data class loss



@dataclass(frozen=True)
class ArchSpec:
    """What one --arch is made of and defaults to; models, config and the CLI all read it from here."""

    one_hot_g: bool  # G takes the class as a one-hot beside z; otherwise it may use class-conditional BatchNorm
    d_dropout: bool  # D has dropout layers (--d_dropout applies)
    tuned: bool  # --recipe tuned applies (it changes D's dropout and class loss, designed for the paper's D)
    defaults: dict[str, Any]  # what a run gets when --loss, --cls_loss, --g_cond, --ema_decay, --d_dropout are unset


# The paper's nets keep the paper's recipe (fidelity); the spectral-norm nets get the recipe StudioGAN trains
# ACGAN with (hinge, D's classifier on real images only, EMA) and have no dropout in D. The ImageNet nets share
# the paper's D design, so the tuned recipe is accepted there, though it was found and measured on `paper`.
_PAPER_RECIPE = {"loss": "bce", "cls_loss": "ce", "g_cond": "concat", "ema_decay": 0.0, "d_dropout": 0.5}
ARCH_SPECS: dict[str, ArchSpec] = {
    "paper": ArchSpec(one_hot_g=True, d_dropout=True, tuned=True, defaults=_PAPER_RECIPE),
    "sndcgan": ArchSpec(one_hot_g=False, d_dropout=False, tuned=False, defaults={
        "loss": "hinge", "cls_loss": "ce_real", "g_cond": "cbn", "ema_decay": 0.999, "d_dropout": 0.0}),
    "resnet": ArchSpec(one_hot_g=False, d_dropout=False, tuned=False, defaults={
        "loss": "hinge", "cls_loss": "ce_real", "g_cond": "cbn", "ema_decay": 0.9999, "d_dropout": 0.0}),
    "imagenet": ArchSpec(one_hot_g=True, d_dropout=True, tuned=True, defaults=_PAPER_RECIPE),
}
ARCHS = tuple(ARCH_SPECS)

# --recipe tuned: what the shapes learning test found and CIFAR-10 confirmed for the paper's nets
# (docs/recipes.md). It fills only the choices a user left unset, and its learning rates are multiples of --lr
# (2e-4 -> D 1e-3, G 4e-4), so --lr keeps its meaning.
TUNED_RECIPE: dict[str, Any] = {"cls_loss": "ce_real", "d_dropout": 0.0, "diffaug": "color,translation,cutout",
                                "ema_decay": 0.999}
TUNED_LR_SCALE = {"lr_d": 5.0, "lr_g": 2.0}

# NVlabs' ema_rampup (StyleGAN2-ADA's CIFAR config, EDM): the EMA's half-life stays within 5% of the steps taken.
# A fixed 1,000-step warm-up left G_ema averaging the whole young run, so short runs sampled a blur of it.
EMA_RAMPUP = 0.05


def default_ema_warmup(ema_decay: float) -> int:
    """Steps until the EMA reaches ema_decay when its half-life is EMA_RAMPUP of the steps taken (0: EMA off)."""
    if ema_decay <= 0.0:
        return 0
    # the warm-up grows the horizon 1/(1 - d) linearly (ema.ema_decay); a half-life of r * step is a horizon of
    # r * step / ln 2, so the ramp ends where that reaches 1/(1 - ema_decay)
    return round(math.log(2) / (EMA_RAMPUP * (1.0 - ema_decay)))


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; CLI flags map 1:1 onto these fields."""

    # data (the first five names and defaults are the original implementation's)
    dataset: str = "cifar10"
    root_dir: str = "data"
    num_workers: int = 2
    image_size: int = 32
    download: bool = False
    classes: str | None = None
    class_names_file: str | None = None
    stream: str = "auto"
    # model and optimisation (the paper's CIFAR-10 settings)
    batch_size: int = 100
    nz: int = 100
    num_epochs: int = 300
    lr: float = 0.0002
    beta1: float = 0.5
    beta2: float = 0.999
    # architecture and recipe; None = the recipe's or the arch's choice, resolved before a run starts
    arch: str = "paper"
    recipe: str = "default"
    g_cond: str | None = None
    loss: str | None = None
    cls_loss: str | None = None
    g_cls_weight: float = 1.0  # the paper's: G's class term counts as much as its source term
    lr_d: float | None = None
    lr_g: float | None = None
    n_dis: int = 1
    ema_decay: float | None = None
    ema_warmup: int | None = None
    diffaug: str | None = None
    d_dropout: float | None = None
    # run control
    outdir: str = "runs"
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    compile: str = "off"
    resume: str | None = None
    max_steps: int | None = None
    log_every: int = 50
    sample_every: int = 500
    ckpt_every: int = 1000
    keep_ckpts: int = 3
    on_nan: str = "stop"
    max_rollbacks: int = 3
    sync_bn: bool = False
    # in-training evaluation (off unless --eval_every is given)
    eval_every: int | None = None
    eval_metrics: str = "fid"
    eval_samples: int = 10_000
    detector: str | None = None
    classifier: str | None = None

    def __post_init__(self) -> None:
        """Refuse values no run could use, with one line naming the flag."""
        positive = ("batch_size", "nz", "num_epochs", "image_size", "log_every", "sample_every",
                    "ckpt_every", "keep_ckpts", "n_dis")
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"--{name} must be positive, got {getattr(self, name)}")
        for name in ("num_workers", "max_rollbacks", "ema_warmup"):
            if (getattr(self, name) or 0) < 0:
                raise UserError(f"--{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_steps", "eval_every"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise UserError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.eval_samples < 2:
            raise UserError(f"--eval_samples must be at least 2, got {self.eval_samples}")
        for name in ("lr", "lr_d", "lr_g", "g_cls_weight"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise UserError(f"--{name} must be positive, got {value}")
        if self.d_dropout is not None and not 0.0 <= self.d_dropout < 1.0:
            raise UserError(f"--d_dropout must be in [0, 1), got {self.d_dropout}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise UserError(f"--ema_decay must be in [0, 1) (0 turns EMA off), got {self.ema_decay}")
        if self.log_every % self.n_dis:
            raise UserError(f"--log_every ({self.log_every}) must be a multiple of --n_dis ({self.n_dis}): "
                            "every logged row needs a G update")
        parse_diffaug(self.diffaug)
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserError(f"--{name} must be in [0, 1), got {getattr(self, name)}")
        choices = {"dataset": DATASETS, "stream": STREAM_MODES, "precision": PRECISIONS, "compile": COMPILE_MODES,
                   "on_nan": ON_NAN,
                   "arch": ARCHS, "recipe": RECIPES, "loss": SOURCE_LOSSES, "cls_loss": CLASS_LOSSES,
                   "g_cond": G_CONDITIONING}
        for name, allowed in choices.items():
            if getattr(self, name) is None and name in ("loss", "cls_loss", "g_cond"):
                continue
            if getattr(self, name) not in allowed:
                raise UserError(f"--{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field, JSON- and weights_only-safe."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def resolved(self) -> TrainConfig:
        """This config with unset choices filled in (what a run really uses): flag, then --recipe, then --arch."""
        recipe: dict[str, Any] = {"diffaug": "none"}
        spec = ARCH_SPECS[self.arch]
        if self.recipe == "tuned":
            if not spec.tuned:
                tuned = " or ".join(a for a, s in ARCH_SPECS.items() if s.tuned)
                raise UserError(f"--recipe tuned is for --arch {tuned} (measured with the paper's nets); "
                                f"{self.arch} has its own defaults, set other choices flag by flag")
            recipe = {**TUNED_RECIPE, **{k: scale * self.lr for k, scale in TUNED_LR_SCALE.items()}}
        fills = {**spec.defaults, "lr_d": self.lr, "lr_g": self.lr, **recipe}
        config = self.replace(**{k: v for k, v in fills.items() if getattr(self, k) is None})
        if config.ema_warmup is None:
            config = config.replace(ema_warmup=default_ema_warmup(config.ema_decay))
        if config.g_cond == "cbn" and spec.one_hot_g:
            cbn = " or ".join(a for a, s in ARCH_SPECS.items() if not s.one_hot_g)
            raise UserError(f"--g_cond cbn needs --arch {cbn} (the {config.arch} G takes a one-hot input)")
        if config.d_dropout and not spec.d_dropout:
            dropout = " or ".join(a for a, s in ARCH_SPECS.items() if s.d_dropout)
            raise UserError(f"--d_dropout applies to --arch {dropout} (the {config.arch} D has no dropout)")
        return config


def parse_diffaug(policy: str | None) -> tuple[str, ...]:
    """--diffaug 'color,translation,cutout' -> its parts; 'none', '' or unset -> no augmentation."""
    text = (policy or "").strip().lower()
    if text in ("", "none"):
        return ()
    parts = tuple(p.strip() for p in text.split(","))
    unknown = [p for p in parts if p not in DIFFAUG_POLICIES]
    if unknown:
        raise UserError(f"--diffaug: unknown augmentation {unknown[0]!r}; use none or a comma-separated subset of "
                        f"{','.join(DIFFAUG_POLICIES)}")
    if len(set(parts)) != len(parts):
        raise UserError(f"--diffaug: {policy!r} names a transform twice")
    return parts


DEFAULTS = TrainConfig()


@dataclass(frozen=True)
class ClassifierDefaults:
    """Defaults of `acgan classifier train` (what they reach: docs/metrics.md)."""

    epochs: int = 10
    batch_size: int = 256
    lr: float = 0.4  # peak of the one-cycle schedule (SGD with Nesterov momentum)
    width: int = 32  # channels of the first stage; 32 -> about 1.6M parameters


CLASSIFIER_DEFAULTS = ClassifierDefaults()


@dataclass(frozen=True)
class EvalDefaults:
    """Defaults of `acgan evaluate` and `acgan sample`; `batch_size` is every generator/detector/classifier batch."""

    metrics: str = "fid,is"
    num_samples: int = 50_000  # FID-50k, as papers report it
    batch_size: int = 250  # large enough for efficient convolutions, small enough for 8 GB of GPU memory
    num_workers: int = 2
    sample_num: int = 10  # `acgan sample`: images of one class, or columns per class
    sample_steps: int = 10  # `acgan sample`: points on each interpolation strip
    weights: str = "ema"  # the run's EMA of G (its G where it kept none); "raw": G as trained
    # the detector's precision ($ACGAN_DETECTOR_PRECISION=bf16 for quick, non-standard FID on a CPU)
    detector_precision: str = "fp32"


EVAL_DEFAULTS = EvalDefaults()
GENERATOR_WEIGHTS = ("ema", "raw")  # which of a checkpoint's generators `sample` and `evaluate` load
EVAL_BATCH = EVAL_DEFAULTS.batch_size
FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))

# Settings that may differ when a run is resumed: they change how long or how it is watched,
# not what is trained. Everything else comes from the checkpoint so that resume stays exact.
RESUME_OVERRIDABLE = ("num_epochs", "max_steps", "log_every", "sample_every", "ckpt_every", "keep_ckpts",
                      "device", "num_workers", "root_dir", "download", "stream", "outdir", "resume", "compile",
                      "on_nan", "max_rollbacks", "eval_every",
                      "eval_metrics", "eval_samples", "detector", "classifier")


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build a config from a (possibly older or partial) dict, ignoring unknown keys."""
    values = {k: v for k, v in values.items() if k in FIELD_NAMES}
    values.setdefault("arch", "paper")  # written before --arch existed: the paper's nets were the only ones
    return TrainConfig(**values)


def write_config_json(config: TrainConfig, path: Path, extra: dict[str, Any] | None = None) -> None:
    """Write config.json: the resolved settings plus facts of the run (classes, world size)."""
    payload = {**config.to_dict(), **(extra or {})}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def merge_resumed_config(saved: dict, config: TrainConfig, explicit: frozenset[str]) -> TrainConfig:
    """The checkpoint's settings, except for the run-control flags the user gave explicitly."""
    resumed = config_from_dict(saved)
    changes = {k: getattr(config, k) for k in explicit if k in RESUME_OVERRIDABLE}
    ignored = sorted(k for k in explicit - set(RESUME_OVERRIDABLE) if getattr(config, k) != getattr(resumed, k))
    if ignored:
        print(f"note: resuming keeps the checkpoint's {', '.join('--' + k for k in ignored)}")
    return resumed.replace(**changes)
