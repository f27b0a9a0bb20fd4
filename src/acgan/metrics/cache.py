"""On-disk cache of real-data statistics, keyed by what they were computed from."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np


def default_cache_dir() -> Path:
    """The cache folder: `$ACGAN_CACHE` if set, else `~/.cache/acgan`."""
    env = os.environ.get("ACGAN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "acgan"


def cache_key(key_parts: Mapping[str, Any]) -> str:
    """Hex sha256 of the key parts as canonical JSON (so dict order never matters)."""
    blob = json.dumps(dict(key_parts), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def stats_path(key_parts: Mapping[str, Any], cache_dir: Path) -> Path:
    """Where the statistics for these key parts live: `<cache_dir>/stats/<key>.npz`."""
    return Path(cache_dir) / "stats" / f"{cache_key(key_parts)}.npz"


def save_npz_atomic(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Write arrays to `path` so that readers see either the old file or the complete new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        # A file object keeps numpy from appending its own ".npz" to the temp name.
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_npz(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays in `path`, or None when it is missing or unreadable (a torn or foreign file)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def cached(
    key_parts: Mapping[str, Any],
    compute: Callable[[], dict[str, np.ndarray]],
    cache_dir: Path | None,
) -> dict[str, np.ndarray]:
    """Load the statistics for `key_parts` from `cache_dir`, or compute and store them; None disables it."""
    if cache_dir is None:
        return compute()
    path = stats_path(key_parts, cache_dir)
    found = load_npz(path) if path.is_file() else None
    if found is not None:
        return found
    result = compute()
    try:
        save_npz_atomic(path, result)
    except OSError as e:
        # The statistics are already computed and correct; a read-only or full cache only costs time later.
        warnings.warn(f"could not cache statistics in {path.parent}: {e.strerror or e}", RuntimeWarning,
                      stacklevel=2)
    return result
