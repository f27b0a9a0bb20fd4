"""What is trained and how one step goes: the nets, their optimizers, G's EMA, and the D and G updates."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from acgan import distributed as dist_utils
from acgan.config import TrainConfig, parse_diffaug
from acgan.ema import ema_decay, make_ema, update_ema
from acgan.errors import UserError
from acgan.losses import Objective
from acgan.models import nets_for
from acgan.precision import LAYOUTS, autocast, fast_path, maybe_compile

D_STAT_KEYS = ("loss_D_real", "loss_D_fake", "D_x", "D_G_z1", "acc_real", "acc_fake")
G_STAT_KEYS = ("loss_G", "D_G_z2")


class StatsMeter:
    """Sums of the step statistics, kept on the device between logs; `reduce` is the one host sync."""

    def __init__(self, device: torch.device, step: int, global_batch: int) -> None:
        self.sums = torch.zeros(len(D_STAT_KEYS) + len(G_STAT_KEYS), device=device)
        self.global_batch = global_batch
        self.reset(step)

    def add(self, stats: dict[str, torch.Tensor], update_G: bool) -> None:
        """Count one step: D's statistics always, G's only when G was updated."""
        n = len(D_STAT_KEYS)
        self.sums[:n] += torch.stack([stats[k] for k in D_STAT_KEYS])
        self.num_d += 1
        if update_G:
            self.sums[n:] += torch.stack([stats[k] for k in G_STAT_KEYS])
            self.num_g += 1

    def reduce(self) -> dict[str, float]:
        """Averages since the last reset over steps and ranks (G's over G updates), plus loss_D."""
        n = len(D_STAT_KEYS)
        means = torch.cat([self.sums[:n] / max(self.num_d, 1), self.sums[n:] / max(self.num_g, 1)])
        row = dict(zip(D_STAT_KEYS + G_STAT_KEYS, dist_utils.all_reduce_mean(means).tolist(), strict=True))
        row["loss_D"] = row["loss_D_real"] + row["loss_D_fake"]
        return row

    def images_per_s(self, step: int) -> float:
        """Global images per second since the last reset."""
        return (step - self.step) * self.global_batch / (time.perf_counter() - self.start)

    def reset(self, step: int) -> None:
        """Start a new interval at `step`."""
        self.sums.zero_()
        self.num_d, self.num_g, self.start, self.step = 0, 0, time.perf_counter(), step


@dataclass(frozen=True)
class StepOptions:
    """What a step draws and how G's EMA follows, read once from the resolved config (the losses are the Trainer's)."""

    nz: int
    num_classes: int
    ema_decay: float = 0.0
    ema_warmup: int = 0

    @classmethod
    def from_config(cls, config: TrainConfig, num_classes: int) -> StepOptions:
        """Options of a resolved config (see TrainConfig.resolved)."""
        return cls(config.nz, num_classes, config.ema_decay, config.ema_warmup)


@dataclass
class Trainer:
    """The nets, their optimizers and where the run stands; `G_raw`/`D_raw` are the unwrapped modules."""

    G: nn.Module
    D: nn.Module
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    G_raw: nn.Module
    D_raw: nn.Module
    objective: Objective = field(default_factory=Objective)
    G_ema: nn.Module | None = None  # the moving average of G's weights that samples and metrics use
    step: int = 0
    epoch: int = 0
    batch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def G_eval(self) -> nn.Module:
        """The generator to draw samples and measure: the EMA one when there is one."""
        return self.G_ema if self.G_ema is not None else self.G_raw


def build_trainer(config: TrainConfig, num_classes: int, device: torch.device, info: dist_utils.DistInfo,
                  memory_format: torch.memory_format = torch.contiguous_format) -> Trainer:
    """The nets of --arch in memory_format and their Adam optimizers, wrapped in DDP under torchrun."""
    config = config.resolved()
    G_raw, D_raw = (net.to(device, memory_format=memory_format) for net in nets_for(config, num_classes))
    if info.distributed and config.sync_bn:  # batch statistics over the global batch, not per rank
        if device.type != "cuda":
            raise UserError("--sync_bn needs CUDA GPUs: PyTorch's SyncBatchNorm has no CPU implementation")
        G_raw, D_raw = nn.SyncBatchNorm.convert_sync_batchnorm(G_raw), nn.SyncBatchNorm.convert_sync_batchnorm(D_raw)
    # one kernel for the whole Adam update instead of a dozen small ones per parameter (benchmarks/README.md)
    fused = device.type in ("cuda", "cpu")
    betas = (config.beta1, config.beta2)
    opt_G = torch.optim.Adam(G_raw.parameters(), lr=config.lr_g, betas=betas, fused=fused)
    opt_D = torch.optim.Adam(D_raw.parameters(), lr=config.lr_d, betas=betas, fused=fused)
    G_ema = make_ema(G_raw) if config.ema_decay > 0 else None
    G, D = maybe_compile(G_raw, config.compile, device), maybe_compile(D_raw, config.compile, device)
    if info.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        G, D = DDP(G, device_ids=ids), DDP(D, device_ids=ids)
    return Trainer(G, D, opt_G, opt_D, G_raw, D_raw, build_objective(config, D_raw), G_ema)


def build_objective(config: TrainConfig, D_raw: nn.Module) -> Objective:
    """The run's objective from its resolved config; d2dce binds D's class proxies once, here."""
    proxies = D_raw.proxies if config.cls_loss == "d2dce" else None
    return Objective(config.loss, config.cls_loss, parse_diffaug(config.diffaug), proxies, config.g_cls_weight)


def train_step(tr: Trainer, x_real: torch.Tensor, y_real: torch.Tensor, opts: StepOptions,
               amp: contextlib.AbstractContextManager, update_G: bool = True) -> dict[str, torch.Tensor]:
    """One D update, then (if update_G) one G update; returns detached statistics (no host sync)."""
    B, device = x_real.shape[0], x_real.device
    z = torch.randn(B, opts.nz, device=device)  # (B, nz)
    y_fake = torch.randint(0, opts.num_classes, (B,), device=device)  # uniform over all classes
    stats, x_fake = d_update(tr, x_real, y_real, z, y_fake, amp)
    if update_G:
        stats.update(g_update(tr, x_fake, y_fake, opts, amp))
    return stats


# (1) D maximizes L_S + L_C: tell real from generated, and read the class of real images (of generated ones
#     too for the paper's `ce`; the objective knows which).
def d_update(tr: Trainer, x_real: torch.Tensor, y_real: torch.Tensor, z: torch.Tensor, y_fake: torch.Tensor,
             amp: contextlib.AbstractContextManager) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One Adam step of D on a real batch and on G(z, y_fake); returns its statistics and G's images."""
    obj = tr.objective
    tr.opt_D.zero_grad(set_to_none=True)
    with amp:
        source, class_out = tr.D(obj.view(x_real))
    loss_real, stats = obj.d_real(source, class_out, y_real)
    loss_real.backward()
    with amp:
        x_fake = tr.G(z, y_fake)  # (B, 3, S, S), kept with its graph for G's update
        source, class_out = tr.D(obj.view(x_fake.detach()))
    loss_fake, stats_fake = obj.d_fake(source, class_out, y_fake)
    loss_fake.backward()
    tr.opt_D.step()
    return {**stats, **stats_fake}, x_fake


# (2) G maximizes L_C - L_S: images D takes for real and reads as the class G was asked for.
def g_update(tr: Trainer, x_fake: torch.Tensor, y_fake: torch.Tensor, opts: StepOptions,
             amp: contextlib.AbstractContextManager) -> dict[str, torch.Tensor]:
    """One Adam step of G through the D just updated, then the EMA of G; returns G's statistics."""
    tr.opt_G.zero_grad(set_to_none=True)
    tr.D_raw.requires_grad_(False)  # D's weight gradients are not needed here: skip computing them
    # DDP(D) must not reduce here: D takes no step, and its frozen weights never mark their gradients ready
    no_sync = tr.D.no_sync if hasattr(tr.D, "no_sync") else contextlib.nullcontext
    with no_sync():  # one context for forward and backward: a generator context manager cannot be re-entered
        with amp:
            source, class_out = tr.D(tr.objective.view(x_fake))
        loss, stats = tr.objective.g(source, class_out, y_fake)
        loss.backward()
    tr.D_raw.requires_grad_(True)
    tr.opt_G.step()
    if tr.G_ema is not None:
        update_ema(tr.G_ema, tr.G_raw, ema_decay(tr.step, opts.ema_decay, opts.ema_warmup))
    return stats


def step_timer(config: TrainConfig, num_classes: int, device: torch.device) -> Callable[[str, int], list[float]]:
    """time_steps('fp32 channels_last', n): seconds of n steps of throwaway copies of the run's nets, on random data.

    For the precision probe. It draws from a forked RNG, so the run's own random stream is as if it never ran.
    """
    trainers: dict[str, Trainer] = {}  # one per layout, built on first use
    opts = StepOptions.from_config(config.resolved(), num_classes)
    B, S = config.batch_size, config.image_size

    def time_steps(label: str, n: int) -> list[float]:
        precision, layout = fast_path(label)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(0)
            if layout not in trainers:
                trainers[layout] = build_trainer(config, num_classes, device, dist_utils.DistInfo(), LAYOUTS[layout])
            x = torch.rand(B, 3, S, S, device=device) * 2 - 1
            y = torch.randint(0, num_classes, (B,), device=device)
            amp, seconds = autocast(device, precision), []
            for _ in range(n):
                start = time.perf_counter()
                train_step(trainers[layout], x, y, opts, amp)["loss_G"].item()  # .item(): the step really finished
                seconds.append(time.perf_counter() - start)
        return seconds

    return time_steps


def trainer_state(tr: Trainer, config: TrainConfig, class_names: tuple[str, ...], world_size: int) -> dict:
    """Everything needed to resume exactly, as tensors and plain Python values (weights_only-safe)."""
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    ema = {"G_ema": tr.G_ema.state_dict()} if tr.G_ema is not None else {}
    return {"G": tr.G_raw.state_dict(), "D": tr.D_raw.state_dict(), "opt_G": tr.opt_G.state_dict(),
            "opt_D": tr.opt_D.state_dict(), **ema, "step": tr.step, "epoch": tr.epoch, "batch": tr.batch,
            "rng": rng, "config": config.to_dict(), "class_names": list(class_names),
            "world_size": world_size, **tr.extra}


def match_param_layouts(opt: torch.optim.Optimizer) -> None:
    """Give each optimizer state tensor its parameter's memory layout (in place of the one it was saved in)."""
    # Fused Adam walks a parameter and its moments as flat memory: moments saved by a run in another layout
    # (an NCHW checkpoint resumed where the probe picks channels_last nets, or the other way round) would be
    # applied to the wrong elements without any error.
    for p, st in opt.state.items():
        for name, t in st.items():
            if isinstance(t, torch.Tensor) and t.shape == p.shape and t.stride() != p.stride():
                st[name] = torch.empty_like(p, dtype=t.dtype).copy_(t)


def restore_trainer(tr: Trainer, state: dict, info: dist_utils.DistInfo, seed: int) -> None:
    """Load nets, optimizers, position and RNG; a different world size reseeds each rank instead."""
    tr.G_raw.load_state_dict(state["G"])
    tr.D_raw.load_state_dict(state["D"])
    for opt, key in ((tr.opt_G, "opt_G"), (tr.opt_D, "opt_D")):
        opt.load_state_dict(state[key])
        match_param_layouts(opt)
    if tr.G_ema is not None:  # checkpoints from before EMA existed have none: start it from G
        tr.G_ema.load_state_dict(state.get("G_ema") or state["G"])
    tr.step, tr.epoch, tr.batch = int(state["step"]), int(state["epoch"]), int(state["batch"])
    tr.extra.update({k: state[k] for k in ("rollbacks", "best_fid", "best_cacc") if k in state})
    if info.world_size == 1 and int(state.get("world_size", 1)) == 1:
        torch.set_rng_state(state["rng"]["cpu"])
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    else:  # other ranks' RNG streams were never saved: derive fresh, distinct ones
        torch.manual_seed((seed * info.world_size + info.rank) * 1_000_003 + tr.step)
