"""Writing a run's files on a disk that may fill up or refuse: one clear line, and what can still go on."""

from __future__ import annotations

import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from acgan.errors import UserError

# What the machine, not the program, gets wrong: out of space or quota, no permission, a read-only mount.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EACCES, errno.EPERM, errno.EROFS})
T = TypeVar("T")


class WriteError(UserError):
    """A file of the run could not be written for a reason of the disk's; the message is the one line to show."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


def is_storage_error(e: BaseException) -> bool:
    """True for an OSError of space, quota or permission (or its WriteError)."""
    return isinstance(e, WriteError) or (isinstance(e, OSError) and e.errno in STORAGE_ERRNOS)


def os_error_in(e: BaseException) -> OSError | None:
    """The OSError behind e, following its cause and context chain (None when there is none)."""
    # torch.save reports a full disk as a RuntimeError of its zip writer, with the OSError chained inside it
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return None


def free_bytes(path: Path) -> int | None:
    """Free bytes on the file system that holds path (or its nearest existing parent); None if unknown."""
    for candidate in (Path(path), *Path(path).parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def human_bytes(n: float) -> str:
    """1536 -> '1.5 KB', in powers of 1000 as df -H prints."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def describe(path: Path, e: OSError, needed: int | None = None) -> str:
    """'could not write PATH: No space left on device (needs about 39.0 MB; 12.0 MB free)'."""
    reason = os.strerror(e.errno) if e.errno else (e.strerror or type(e).__name__)
    free = free_bytes(path)
    sizes = [f"needs about {human_bytes(needed)}"] if needed else []
    sizes += [f"{human_bytes(free)} free"] if free is not None else []
    return f"could not write {path}: {reason}" + (f" ({'; '.join(sizes)})" if sizes else "")


def write_error(path: Path, e: OSError, needed: int | None = None) -> WriteError:
    """The WriteError (one line, naming the file) for an OSError met while writing path."""
    return WriteError(describe(path, e, needed), Path(path))


def check_writable_dir(folder: Path, flag: str = "--outdir") -> None:
    """Refuse, in one line, a folder that cannot be created or written (before any work is done for it)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".acgan-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise UserError(f"{flag} {folder} cannot be written ({reason}): choose another folder or fix its "
                        "permissions") from None


def append_line(path: Path, line: str) -> None:
    """Append one text line whole or not at all: a write cut short by a full disk is truncated away again."""
    data = (line.rstrip("\n") + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:  # a full disk can take part of a write before it refuses the rest
                view = view[os.write(fd, view):]
        except OSError:
            os.ftruncate(fd, start)  # a torn line would be the last thing a reader sees of the run
            raise
    finally:
        os.close(fd)


def warn(message: str) -> None:
    """One warning line on stderr, on a line of its own above the progress bar."""
    from tqdm import tqdm

    tqdm.write(f"warning: {message}", file=sys.stderr)


class BestEffort:
    """Runs writes that must never end a run (samples, plots, stats, TensorBoard): a failure is one warning.

    A kind of write that keeps failing is reported once, and once more when it works again, not every step.
    """

    def __init__(self) -> None:
        self.failing: set[str] = set()

    def __call__(self, what: str, path: Path, write: Callable[[], T]) -> T | None:
        """write(), or None after a warning when it fails for a reason of the disk's."""
        try:
            result = write()
        except OSError as e:
            if not is_storage_error(e):
                raise
            if what not in self.failing:
                self.failing.add(what)
                warn(f"{what} not written, training goes on: {describe(Path(e.filename or path), e)}")
            return None
        if what in self.failing:
            self.failing.discard(what)
            warn(f"{what} written again ({path})")
        return result


def unused_path(path: Path) -> Path:
    """path, or path with -1, -2, ... before the suffix: an earlier result is never overwritten."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate
