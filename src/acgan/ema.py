"""Exponential moving average of G's weights: the averaged G samples better than the raw one late in training."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn


def _unwrap(module: nn.Module) -> nn.Module:
    """The bare module under (Distributed)DataParallel (.module) and torch.compile (._orig_mod) wrappers."""
    # checked by type, not by attribute name: a generator may well own a child called "module"
    while True:
        if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        else:
            return module


def ema_decay(step: int, decay: float, warmup_steps: int) -> float:
    """EMA decay at this step: the averaging horizon 1/(1 - d) grows linearly to 1/(1 - decay) over warmup_steps."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must lie in [0, 1], got {decay}")
    if warmup_steps <= 0 or step >= warmup_steps:
        return decay
    # Why a ramp of the horizon (how many recent steps the average spans; StyleGAN2-ADA's ema_rampup ties its
    # half-life to images seen the same way): early G weights are near-random and move fast, so a fixed 0.999
    # would keep sampling from a blur of the initialisation for thousands of steps. The horizon
    # 1 + f * (1/(1 - decay) - 1), f = step / warmup_steps, starts at 1 (the EMA copies G) and grows with the
    # steps taken; the default warm-up (config.default_ema_warmup) keeps it near 7% of them, as NVlabs' does.
    # Solving 1 - 1/horizon for d gives the closed form below, which never divides by 1 - decay (decay = 1 is safe).
    frac = max(step, 0) / warmup_steps
    denom = 1.0 - decay + frac * decay
    return frac * decay / denom if denom > 0 else decay


def _matching(ema_named: Iterable[tuple[str, torch.Tensor]], named: Iterable[tuple[str, torch.Tensor]],
              what: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Pair tensors by name, refusing models whose names differ (the EMA would silently skip some)."""
    ema, src = dict(ema_named), dict(named)
    if ema.keys() != src.keys():
        raise ValueError(f"G_ema and G {what} differ by name: {sorted(ema.keys() ^ src.keys())[:5]}")
    return [ema[n] for n in src], [src[n].detach() for n in src]


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, decay: float) -> None:
    """Move G_ema's parameters towards G's (ema = decay * ema + (1 - decay) * p) and copy G's buffers as-is."""
    G_ema, G = _unwrap(G_ema), _unwrap(G)
    ema_params, params = _matching(G_ema.named_parameters(), G.named_parameters(), "parameters")
    if params:  # one fused kernel per dtype/device group instead of a Python loop over hundreds of tensors
        torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    # BN running statistics and spectral-norm u/v vectors are estimates G already tracks: average nothing
    ema_buffers, buffers = _matching(G_ema.named_buffers(), G.named_buffers(), "buffers")
    if buffers:
        torch._foreach_copy_(ema_buffers, buffers)


def make_ema(G: nn.Module) -> nn.Module:
    """A frozen deep copy of G (unwrapped from DDP/compile) in eval mode, to be fed by update_ema."""
    G_ema = copy.deepcopy(_unwrap(G)).eval()
    G_ema.requires_grad_(False)
    return G_ema
