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
from acgan.storage import os_error_in, write_error

RUN_DIR_RE = re.compile(r"^(\d{5})-")
CKPT_RE = re.compile(r"^ckpt-(\d{8,})\.pt$")
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
    """The newest complete checkpoint of a run: the newest numbered one, or `last.pt` when it is that file."""
    ckpt_dir = run_dir / "checkpoints"
    if not ckpt_dir.is_dir():
        return None
    numbered = _numbered(ckpt_dir)[::-1]
    last = ckpt_dir / "last.pt"
    candidates = numbered
    if last.is_file():
        # A kill between writing ckpt-N and re-linking leaves last.pt on an older file: then ckpt-N is newer.
        last_is_newest = not numbered or _same_file(last, numbered[0]) or _mtime(last) > _mtime(numbered[0])
        candidates = [last, *numbered] if last_is_newest else [*numbered, last]
    # Saves are atomic, so an incomplete file means outside damage: skip it; if all are, name the newest in errors.
    return next((p for p in candidates if _is_complete(p)), candidates[0] if candidates else None)


def _numbered(ckpt_dir: Path) -> list[Path]:
    """Numbered checkpoints `ckpt-<step>.pt`, oldest first."""
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := CKPT_RE.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:  # pruned meanwhile by the run that owns it
        return False


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return float("-inf")


def _is_complete(path: Path) -> bool:
    """True when the file is a whole torch zip archive (a truncated one has lost its central directory)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(name.endswith("/data.pkl") or name == "data.pkl" for name in z.namelist())
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return False


def _remove_stale_temps(ckpt_dir: Path) -> None:
    """Delete temp files a killed save left behind (`.<name>.<random>.tmp`, `.last.pt.tmp`)."""
    for tmp in ckpt_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


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


def state_bytes(state: Any) -> int:
    """Bytes of the tensors in a (nested) state: about what its file needs on disk."""
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(state_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(state_bytes(v) for v in state)
    return 0


def atomic_save(state: dict[str, Any], path: Path) -> None:
    """Write to a temp file in the same directory, fsync, then rename: never a truncated file at `path`."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except (OSError, RuntimeError) as e:
        if (cause := os_error_in(e)) is None:
            raise
        raise write_error(path, cause, state_bytes(state)) from None
    finally:
        if tmp is not None:  # after a successful rename there is nothing left to remove
            Path(tmp).unlink(missing_ok=True)


def _durable_copy(src: Path, dst: Path) -> None:
    """Copy and fsync, for file systems without hard links: renaming an unsynced copy could leave it empty."""
    with src.open("rb") as fin, dst.open("wb") as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
        fout.flush()
        os.fsync(fout.fileno())


def save_checkpoint(state: dict[str, Any], run_dir: Path, step: int, keep: int) -> Path:
    """Save `ckpt-<step>.pt`, point `last.pt` at it, and prune older numbered ones beyond `keep`."""
    ckpt_dir = run_dir / "checkpoints"
    if ckpt_dir.is_dir():
        _remove_stale_temps(ckpt_dir)  # this process is the run's only writer: any temp file is a dead save's
    path = ckpt_dir / f"ckpt-{step:08d}.pt"
    atomic_save({**state, "format_version": FORMAT_VERSION}, path)
    # last.pt is a second name for the same complete file: a hard link costs no extra write
    tmp = ckpt_dir / ".last.pt.tmp"
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)
        except OSError:
            _durable_copy(path, tmp)
        os.replace(tmp, ckpt_dir / "last.pt")
        _fsync_dir(ckpt_dir)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_error(ckpt_dir / "last.pt", e) from None
    for old in _numbered(ckpt_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_weights(path: Path, kind: str, map_location: str | torch.device = "cpu") -> Any:
    """torch.load with weights_only=True for any acgan file (`kind` names it: checkpoint, classifier).

    A missing, foreign, truncated or code-carrying file is one clear line, never a traceback.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{kind} not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "global" not in str(e).lower():  # a broken pickle, not one that names code to run
            raise UserError(f"{path} is not a readable {kind} (truncated or corrupt): {type(e).__name__}") from None
        first = str(e).strip().splitlines()[0]
        raise UserError(f"refusing to load {path}: it is not a plain-weights {kind} ({first[:200]})") from None
    # A damaged archive or pickle fails in torch's reader and weights-only unpickler in many ways (RuntimeError,
    # EOFError, IndexError, AssertionError, BadZipFile...): to the user they all mean the same.
    except Exception as e:
        raise UserError(f"{path} is not a readable {kind} (truncated or corrupt): {type(e).__name__}") from None


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a training checkpoint safely and check it is shaped like one."""
    state = load_weights(path, "checkpoint", map_location)
    _check_layout(state, path)
    return state


def _check_layout(state: Any, path: Path) -> None:
    """Refuse a file that unpickles but is not shaped like an acgan checkpoint, before anyone indexes into it."""
    required = ("G", "D", "config", "step", "class_names")
    if not isinstance(state, dict) or any(k not in state for k in required):
        raise UserError(f"{path} is not an acgan checkpoint (missing {', '.join(required)})")
    nets_ok = all(isinstance(state[k], dict) and all(isinstance(v, torch.Tensor) for v in state[k].values())
                  for k in ("G", "D"))
    names = state["class_names"]
    names_ok = isinstance(names, (list, tuple)) and len(names) > 0 and all(isinstance(n, str) for n in names)
    step_ok = isinstance(state["step"], int) and not isinstance(state["step"], bool) and state["step"] >= 0
    if not (nets_ok and names_ok and step_ok and isinstance(state["config"], dict)):
        raise UserError(f"{path} is damaged: its G, D, config, step or class_names entry has the wrong type")


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
