"""torchrun awareness: rank, world size, device and process group; everything works without torchrun."""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from acgan.errors import UserError

TIMEOUT_ENV = "ACGAN_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0
# DDP's reducer re-raises backend failures as a plain RuntimeError, so they are told apart by their text.
_PEER_FAILURE_MARKERS = ("gloo", "NCCL", "ProcessGroup", "Connection closed by peer", "Connection reset by peer")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 does all the writing: samples, plots, stats, checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when started by torchrun with more than one process."""
        return self.world_size > 1


def env_info() -> DistInfo:
    """Rank and world size from torchrun's environment variables (single process when absent)."""
    try:
        return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                        int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as e:
        raise UserError(f"bad torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK): {e}") from None


def rank_label() -> str:
    """' (rank R of W)' under torchrun with several processes, else '': tells whose error a line is."""
    rank, world = os.environ.get("RANK", "0"), os.environ.get("WORLD_SIZE", "1")
    return f" (rank {rank} of {world})" if world not in ("", "1") else ""


def timeout_seconds() -> float:
    """How long a collective may wait for a peer: $ACGAN_DIST_TIMEOUT seconds, default 600."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise UserError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


def init_process_group(info: DistInfo, device: torch.device, timeout_s: float | None = None) -> None:
    """Join torchrun's group: nccl on CUDA, gloo on CPU; a timeout turns a dead peer into an error, not a hang."""
    if not info.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    timeout = datetime.timedelta(seconds=timeout_s if timeout_s is not None else timeout_seconds())
    dist.init_process_group(backend, timeout=timeout, **kwargs)


def destroy_process_group() -> None:
    """Leave the group if one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _is_peer_failure(e: BaseException) -> bool:
    """True for errors raised because another rank died, stalled or could not be reached."""
    return isinstance(e, dist.DistError) or (
        isinstance(e, RuntimeError) and any(m in str(e) for m in _PEER_FAILURE_MARKERS))


@contextlib.contextmanager
def process_group(info: DistInfo, device: torch.device) -> Iterator[None]:
    """Join the group for the body and leave it after; a failed collective becomes one UserError line."""
    try:
        init_process_group(info, device)
        yield
    except Exception as e:
        if not info.distributed or not _is_peer_failure(e):
            raise
        # Without this every surviving rank prints a long backend traceback that hides the real cause.
        text = str(e).strip() or type(e).__name__
        first = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0])  # drop gloo's "[file.cc:line]" prefix
        first = first.split(". ")[0][:300]  # the backend's advice after the first sentence is noise here
        raise UserError(f"lost contact with the other ranks ({first}); the rank that failed first "
                        f"reports the cause, or one stalled past {TIMEOUT_ENV}={timeout_seconds():g}s") from None
    finally:
        destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op for a single process)."""
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: object, info: DistInfo) -> object:
    """Rank 0's value of obj on every rank (e.g. the run directory it created)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (the tensor itself for a single process)."""
    if dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def any_rank(flag: bool, device: torch.device) -> bool:
    """True if flag is True on any rank: lets one rank's stop request stop every rank together."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def check_agree(value: object, what: str, info: DistInfo) -> None:
    """Fail on every rank, naming each rank's value, unless all ranks hold the same value."""
    if not dist.is_initialized():
        return
    values: list[object] = [None] * info.world_size
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        per_rank = ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
        raise UserError(f"ranks disagree on {what} ({per_rank})")


def reshard_position(epoch: int, batch: int, saved_world_size: int, world_size: int,
                     num_batches: int) -> tuple[int, int]:
    """(epoch, batch) of a checkpoint saved by saved_world_size ranks, as a position for world_size ranks."""
    if saved_world_size == world_size:
        return epoch, batch
    # Ranks stride one shared permutation, so b batches on W ranks are its first b*W*B images: the same
    # images count as seen (up to a partial batch) whatever the world size.
    batch = batch * saved_world_size // world_size
    return (epoch + 1, 0) if batch >= num_batches else (epoch, batch)


class StopRequest:
    """SIGTERM/SIGINT ask the loop to finish the step, checkpoint and exit 0; a second SIGINT exits at once."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: checkpoints are atomic, so stopping now is safe
        self.requested = True
        if os.environ.get("RANK", "0") == "0":  # torchrun signals every rank: one notice is enough
            print(f"\n{signal.Signals(signum).name} received: finishing this step and saving a checkpoint")

    def __enter__(self) -> StopRequest:
        with contextlib.suppress(ValueError):  # signals can only be set in the main thread
            for s in (signal.SIGTERM, signal.SIGINT):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
