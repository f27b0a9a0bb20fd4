"""Frozen training configuration: the only place defaults live; saved to and read from config.json."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from acgan.errors import UserError

DATASETS = ("cifar10", "cifar100", "folder", "shapes")
PRECISIONS = ("auto", "fp32", "bf16")
COMPILE_MODES = ("auto", "on", "off")
ON_NAN = ("stop", "rollback")


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a training run; CLI flags map 1:1 onto these fields."""

    # data (the first five names and defaults are the original implementation's)
    dataset: str = "cifar10"
    root_dir: str = "data"
    num_workers: int = 2
    image_size: int = 32
    download: bool = False
    # model and optimisation (the paper's CIFAR-10 settings)
    batch_size: int = 100
    nz: int = 100
    num_epochs: int = 300
    lr: float = 0.0002
    beta1: float = 0.5
    beta2: float = 0.999
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

    def __post_init__(self) -> None:
        """Refuse values no run could use, with one line naming the flag."""
        positive = ("batch_size", "nz", "num_epochs", "image_size", "log_every", "sample_every",
                    "ckpt_every", "keep_ckpts")
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"--{name} must be positive, got {getattr(self, name)}")
        for name in ("num_workers", "max_rollbacks"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_steps", "eval_every"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise UserError(f"--{name} must be positive, got {getattr(self, name)}")
        if self.eval_samples < 2:
            raise UserError(f"--eval_samples must be at least 2, got {self.eval_samples}")
        if not (self.lr > 0):
            raise UserError(f"--lr must be positive, got {self.lr}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise UserError(f"--{name} must be in [0, 1), got {getattr(self, name)}")
        choices = {"dataset": DATASETS, "precision": PRECISIONS, "compile": COMPILE_MODES, "on_nan": ON_NAN}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UserError(f"--{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field, JSON- and weights_only-safe."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


DEFAULTS = TrainConfig()
FIELD_NAMES = tuple(f.name for f in fields(TrainConfig))

# Settings that may differ when a run is resumed: they change how long or how it is watched,
# not what is trained. Everything else comes from the checkpoint so that resume stays exact.
RESUME_OVERRIDABLE = ("num_epochs", "max_steps", "log_every", "sample_every", "ckpt_every", "keep_ckpts",
                      "device", "num_workers", "root_dir", "download", "outdir", "resume", "compile",
                      "on_nan", "max_rollbacks", "eval_every",
                      "eval_metrics", "eval_samples", "detector")


def config_from_dict(values: dict[str, Any]) -> TrainConfig:
    """Build a config from a (possibly older or partial) dict, ignoring unknown keys."""
    return TrainConfig(**{k: v for k, v in values.items() if k in FIELD_NAMES})


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
