"""Run directories and checkpoints: atomic saves, safe loads (weights_only), finding the latest."""

from __future__ import annotations

import os
import pickle
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from acgan.errors import UserError

RUN_DIR_RE = re.compile(r"^(\d{5})-")
CKPT_RE = re.compile(r"^ckpt-(\d{8})\.pt$")
FORMAT_VERSION = 1


def new_run_dir(outdir: Path, desc: str) -> Path:
    """Create the next numbered run directory (`00003-cifar10`), never reusing an existing number."""
    outdir.mkdir(parents=True, exist_ok=True)
    while True:
        taken = [int(m.group(1)) for p in outdir.iterdir() if (m := RUN_DIR_RE.match(p.name))]
        run_dir = outdir / f"{max(taken, default=-1) + 1:05d}-{desc}"
        try:
            run_dir.mkdir()  # fails if another process took the number first: try the next one
            return run_dir
        except FileExistsError:
            continue


def latest_run_dir(outdir: Path) -> Path | None:
    """The highest-numbered run directory under outdir that holds a complete checkpoint."""
    if not outdir.is_dir():
        return None
    runs = sorted((int(m.group(1)), p) for p in outdir.iterdir() if (m := RUN_DIR_RE.match(p.name)) and p.is_dir())
    for _, run_dir in reversed(runs):
        if latest_checkpoint(run_dir) is not None:
            return run_dir
    return None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """`last.pt` if present, else the newest numbered checkpoint of a run."""
    ckpt_dir = run_dir / "checkpoints"
    if (ckpt_dir / "last.pt").is_file():
        return ckpt_dir / "last.pt"
    numbered = sorted(p for p in ckpt_dir.glob("ckpt-*.pt") if CKPT_RE.match(p.name)) if ckpt_dir.is_dir() else []
    return numbered[-1] if numbered else None


def _fsync_dir(path: Path) -> None:
    """Make a rename durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save(state: dict[str, Any], path: Path) -> None:
    """Write to a temp file in the same directory, fsync, then rename: never a truncated file at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise UserError(f"could not write checkpoint {path}: {e.strerror or e}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict[str, Any], run_dir: Path, step: int, keep: int) -> Path:
    """Save `ckpt-<step>.pt`, point `last.pt` at it, and prune older numbered ones beyond `keep`."""
    ckpt_dir = run_dir / "checkpoints"
    path = ckpt_dir / f"ckpt-{step:08d}.pt"
    atomic_save({**state, "format_version": FORMAT_VERSION}, path)
    # last.pt is a second name for the same complete file: a hard link costs no extra write
    tmp = ckpt_dir / ".last.pt.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(path, tmp)
    except OSError:
        shutil.copyfile(path, tmp)
    os.replace(tmp, ckpt_dir / "last.pt")
    _fsync_dir(ckpt_dir)
    numbered = sorted(p for p in ckpt_dir.glob("ckpt-*.pt") if CKPT_RE.match(p.name))
    for old in numbered[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with weights_only=True; foreign, truncated or code-carrying files get one clear line."""
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"refusing to load {path}: it is not a plain-weights checkpoint ({first[:200]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, AttributeError) as e:
        raise UserError(f"{path} is not a readable checkpoint (truncated or corrupt): {type(e).__name__}") from None
    required = ("G", "D", "config", "step", "class_names")
    if not isinstance(state, dict) or any(k not in state for k in required):
        raise UserError(f"{path} is not an acgan checkpoint (missing {', '.join(required)})")
    return state


def resolve_resume(resume: str | None, outdir: str) -> Path | None:
    """The checkpoint `--resume` names: a file, a run directory, or 'auto' (latest run in --outdir)."""
    if resume is None:
        return None
    if resume == "auto":
        run_dir = latest_run_dir(Path(outdir))
        return latest_checkpoint(run_dir) if run_dir else None
    path = Path(resume)
    if path.is_dir():
        ckpt = latest_checkpoint(path)
        if ckpt is None:
            raise UserError(f"--resume: no checkpoint in {path}")
        return ckpt
    if not path.is_file():
        raise UserError(f"--resume: no such file or directory: {path}")
    return path
