"""`python -m acgan ...` for one torchrun rank, plus test-side extras: dump this rank's final parameters, or
make one rank fail or stall mid-run, or fill the disk. Usage: run_rank.py [--dump DIR] [--fail|--stall RANK:STEP]
[--disk_full_from STEP] ACGAN_ARGS...
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import torch

import acgan.train
from acgan.cli import main
from acgan.errors import UserError


def _capture_trainer(box: dict) -> None:
    """Keep the Trainer that acgan.train builds so its weights can be read after the run."""
    build = acgan.train.build_trainer

    def capturing(*args: object, **kwargs: object) -> acgan.train.Trainer:
        box["trainer"] = build(*args, **kwargs)
        return box["trainer"]

    acgan.train.build_trainer = capturing


def _fail() -> None:
    raise UserError(f"injected failure on rank {os.environ['RANK']}")


def _stall() -> None:
    # Stuck where no Python signal handler runs (a kernel, a dead file system): only the launcher's kill ends it.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    threading.Event().wait()


def _inject(action: Callable[[], None], rank: int, step: int) -> None:
    """Call action on one rank just before it takes the given step (0-based)."""
    step_fn = acgan.train.train_step
    calls = {"n": 0}

    def injected(*args: object, **kwargs: object) -> dict:
        if int(os.environ["RANK"]) == rank and calls["n"] == step:
            action()
        calls["n"] += 1
        return step_fn(*args, **kwargs)

    acgan.train.train_step = injected


def _disk_full_from(step: int) -> None:
    """Checkpoints of this step and later find no space left (on whichever rank writes them)."""
    import errno

    save = torch.save

    def full(obj: object, f: object, *args: object, **kwargs: object) -> None:
        if isinstance(obj, dict) and int(obj.get("step", -1)) >= step:
            raise OSError(errno.ENOSPC, "No space left on device")
        save(obj, f, *args, **kwargs)

    torch.save = full


def run(argv: list[str]) -> int:
    """Parse the extras, run the acgan CLI, dump weights if asked; returns the CLI's exit code."""
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--dump", type=Path)
    parser.add_argument("--fail", help="RANK:STEP: raise a UserError there")
    parser.add_argument("--stall", help="RANK:STEP: block there until killed")
    parser.add_argument("--disk_full_from", type=int, help="STEP: checkpoints from this step on find the disk full")
    extras, acgan_args = parser.parse_known_args(argv)
    box: dict = {}
    _capture_trainer(box)
    for action, where in ((_fail, extras.fail), (_stall, extras.stall)):
        if where:
            rank, step = (int(v) for v in where.split(":"))
            _inject(action, rank, step)
    if extras.disk_full_from is not None:
        _disk_full_from(extras.disk_full_from)
    code = main(acgan_args)
    if extras.dump is not None and code == 0:
        tr = box["trainer"]
        params = {net: {k: p.detach().clone() for k, p in m.named_parameters()}
                  for net, m in (("G", tr.G_raw), ("D", tr.D_raw))}  # not buffers: BatchNorm stats stay per rank
        torch.save({**params, "step": tr.step}, extras.dump / f"rank{os.environ['RANK']}.pt")
    return code


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
