"""The feature detector (TorchScript Inception-v3 of stylegan2-ada / edm / clean-fid): find, fetch, run."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import sys
import tempfile
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from acgan.errors import UserError
from acgan.metrics.cache import default_cache_dir

DETECTOR_URL = (
    "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/metrics/"
    "inception-2015-12-05.pt"
)
DETECTOR_SHA256 = "f58cb9b6ec323ed63459aa4fb441fe750cfe39fafad6da5cb504a16f19e958f4"
DETECTOR_FILENAME = "inception-2015-12-05.pt"
_CHUNK = 1 << 20


@functools.lru_cache(maxsize=16)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    """Hex sha256 of a file; size and mtime are in the key so an edited file is hashed again."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, remembered per (path, size, mtime) so the 95 MB detector is hashed once."""
    st = Path(path).stat()
    return _sha256_of(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def _offline_error(reason: object, cache_dir: Path, filename: str) -> UserError:
    return UserError(f"download failed ({reason}); put {filename} in {cache_dir} or pass --detector PATH")


def download_verified(url: str, target: Path, sha256: str) -> Path:
    """Download `url` to `target` via a temp file that is renamed only once its sha256 matches."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}-", suffix=".part")
    except OSError as e:
        raise UserError(f"cannot write to the cache folder {target.parent}: {e.strerror or e}") from e
    tmp = Path(tmp_name)
    h = hashlib.sha256()
    try:
        print(f"downloading {url} to {target}", file=sys.stderr)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            while chunk := resp.read(_CHUNK):
                h.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError, ValueError) as e:
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise _offline_error(reason, target.parent, target.name) from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if h.hexdigest() != sha256:
        tmp.unlink(missing_ok=True)
        raise UserError(
            f"downloaded {url} has sha256 {h.hexdigest()[:16]}..., expected {sha256[:16]}...; "
            f"put a good {target.name} in {target.parent} or pass --detector PATH"
        )
    os.replace(tmp, target)
    return target


def resolve_detector_path(
    detector: str | Path | None,
    cache_dir: Path | None = None,
    url: str = DETECTOR_URL,
    sha256: str = DETECTOR_SHA256,
) -> Path:
    """The detector file: explicit path, else `$ACGAN_DETECTOR`, else the verified cached (or downloaded) one."""
    explicit = detector if detector is not None else os.environ.get("ACGAN_DETECTOR") or None
    if explicit is not None:
        # A file the user names is trusted as is: it may be a deliberately different detector,
        # and its own sha256 keys the statistics cache, so nothing gets mixed up.
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise UserError(f"detector file not found: {path}")
        return path
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_dir / (url.rsplit("/", 1)[-1] or DETECTOR_FILENAME)
    if target.is_file():
        got = file_sha256(target)
        if got != sha256:
            raise UserError(
                f"{target} has sha256 {got[:16]}..., expected {sha256[:16]}...; delete it to download it again"
            )
        return target
    return download_verified(url, target, sha256)


class Detector:
    """A TorchScript feature detector with the Inception call signature, run in batches without grad."""

    def __init__(self, module: torch.nn.Module, name: str, device: torch.device | str = "cpu",
                 batch_size: int = 250) -> None:
        self.module = module.eval()
        self.name = name
        self.device = torch.device(device)
        self.batch_size = batch_size

    def _batches(self, images: Tensor) -> Iterator[Tensor]:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"detector wants uint8 (N, 3, H, W) images, got {images.dtype} {tuple(images.shape)}")
        for start in range(0, images.shape[0], self.batch_size):
            batch = images[start:start + self.batch_size].to(self.device)
            # Inception is an RGB network; grey images go in as three equal channels.
            yield batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch

    @torch.no_grad()
    def features(self, images: Tensor) -> Tensor:
        """Pool features of uint8 (N, 3, H, W) images, float32 on the CPU."""
        out = [self.module(b, return_features=True).float().cpu() for b in self._batches(images)]
        return torch.cat(out) if out else torch.empty(0, 0)  # (N, 2048)

    @torch.no_grad()
    def probabilities(self, images: Tensor) -> Tensor:
        """Class probabilities for the Inception Score (output layer without bias, as the original IS)."""
        out = [self.module(b, return_features=False, no_output_bias=True).double().cpu()
               for b in self._batches(images)]
        return torch.cat(out) if out else torch.empty(0, 0)  # (N, 1008)

    @torch.no_grad()
    def features_and_probabilities(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Both outputs from one pass when the module exposes its output layer, else from two passes."""
        weight = self._output_weight()
        if weight is None:
            return self.features(images), self.probabilities(images)
        feats = self.features(images)  # (N, 2048)
        # Same op as the detector's no_output_bias branch, done here to halve the Inception work.
        probs = torch.softmax(feats.double() @ weight.double().T, dim=1)  # (N, 1008)
        return feats, probs

    def _output_weight(self) -> Tensor | None:
        output = getattr(self.module, "output", None)
        weight = getattr(output, "weight", None) if output is not None else None
        return weight.detach().cpu() if isinstance(weight, Tensor) and weight.ndim == 2 else None


@contextlib.contextmanager
def quiet_jit_deprecation() -> Iterator[None]:
    """Silence torch's TorchScript deprecation notice: the published detector exists only as TorchScript."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=DeprecationWarning)
        yield


def load_detector(path: Path | str, device: torch.device | str = "cpu", batch_size: int = 250) -> Detector:
    """Load a TorchScript detector file; its name (stem + sha256 prefix) keys the statistics cache."""
    path = Path(path)
    try:
        with quiet_jit_deprecation():
            module = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError, OSError) as e:
        raise UserError(f"cannot load detector {path}: not a TorchScript file ({type(e).__name__})") from e
    return Detector(module, name=f"{path.stem}-{file_sha256(path)[:16]}", device=device, batch_size=batch_size)
