"""The fast-path switches: which precision the nets run in, and the autocast context for it."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for the nets' forward passes; master weights and losses stay fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 on CPUs with native bf16, fp32 elsewhere (GPUs included: measured faster there)."""
    if precision != "auto":
        return precision
    if device.type != "cpu":
        # On an H100 these small nets are bound by kernel launches, not arithmetic: autocast's extra cast
        # kernels made every arch slower (paper 3928 vs 4865 img/s, sndcgan 1822 vs 2425, resnet 1409 vs 1773)
        return "fp32"
    return "bf16" if torch.backends.mkldnn.is_available() and _cpu_has_bf16() else "fp32"


def _cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AVX-512 BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in (" avx512_bf16", " amx_bf16"))




def should_compile(mode: str, device: torch.device) -> bool:
    """'auto' compiles on CUDA only: on CPU, torch.compile of these nets measured slower than eager."""
    return mode == "on" or (mode == "auto" and device.type == "cuda")


def maybe_compile(module: torch.nn.Module, mode: str, device: torch.device) -> torch.nn.Module:
    """The module wrapped by torch.compile when asked for (state_dict stays on the unwrapped module)."""
    return torch.compile(module) if should_compile(mode, device) else module
