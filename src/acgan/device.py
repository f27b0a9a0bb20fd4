"""Which device a command runs on: --device auto|cpu|cuda|cuda:N, checked once with one clear line."""

from __future__ import annotations

import torch

from acgan.errors import UserError


def resolve_device(device: str, local_rank: int | None = None) -> torch.device:
    """'auto' -> cuda when available, else cpu; a bare 'cuda' takes cuda:local_rank under torchrun."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device: unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda was asked for but no CUDA GPU is available")
        if dev.index is None:
            dev = torch.device("cuda", local_rank if local_rank is not None else torch.cuda.current_device())
        torch.cuda.set_device(dev)
    return dev
