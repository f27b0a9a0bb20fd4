"""`acgan export`: a trained generator on its own, in a format others can load without the training run.

- safetensors: a folder in the Hugging Face Hub layout (model.safetensors + config.json) that
  `acgan.load_generator` and `acgan serve` accept like a checkpoint;
- torchscript: one file that plain torch loads and runs, with no acgan installed;
- onnx: one file for onnxruntime and other runtimes, checked against torch's own output when written.

Every format maps noise z (N, nz) float32 and class indices y (N,) int64 to images (N, 3, S, S) in [-1, 1], and
carries the class names, nz, image size, arch and training step (config.json, a TorchScript extra file
`acgan.json`, or the ONNX model's metadata).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from acgan.config import EXPORT_FORMATS as FORMATS
from acgan.errors import UserError
from acgan.generator import CONFIG_FILE, EXPORT_FORMAT, WEIGHTS_FILE, TrainedGenerator

ONNX_OPSET = 17
ONNX_TOLERANCE = 1e-4  # largest |onnxruntime - torch| accepted on images in [-1, 1]


def export_generator(gen: TrainedGenerator, fmt: str, out: Path) -> Path:
    """Write the generator in `fmt` to `out` (a folder for safetensors, a file otherwise); never overwrites."""
    if fmt not in FORMATS:
        raise UserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    if out.exists():
        raise UserError(f"{out} already exists: delete it or choose another --out")
    writer: Callable[[TrainedGenerator, Path], None] = {
        "safetensors": _write_safetensors, "torchscript": _write_torchscript, "onnx": _write_onnx}[fmt]
    out.parent.mkdir(parents=True, exist_ok=True)
    writer(_on_cpu(gen), out)
    return out


def export_metadata(gen: TrainedGenerator) -> dict:
    """What an exported generator carries beside its weights (plain JSON)."""
    c = gen.config
    return {"acgan_export": EXPORT_FORMAT, "arch": c.arch, "nz": c.nz, "image_size": c.image_size,
            "g_cond": c.g_cond, "num_classes": len(gen.class_names), "class_names": list(gen.class_names),
            "step": gen.step, "source": gen.source, "train_config": c.to_dict(),
            "inputs": {"z": "float32 (N, nz), standard normal", "y": "int64 (N,), class indices"},
            "output": "float32 (N, 3, image_size, image_size) in [-1, 1]"}


def _on_cpu(gen: TrainedGenerator) -> TrainedGenerator:
    """The generator moved to the CPU: exported files should not depend on the machine that wrote them."""
    cpu = torch.device("cpu")
    return TrainedGenerator(gen.net.to(cpu), gen.class_names, gen.config, gen.step, cpu, gen.source)


def _example_inputs(gen: TrainedGenerator, n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.randn(n, gen.nz, generator=torch.Generator().manual_seed(0))
    y = torch.arange(n) % len(gen.class_names)
    return z, y


def _write_safetensors(gen: TrainedGenerator, out: Path) -> None:
    from safetensors.torch import save_file

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        weights = {k: v.detach().contiguous() for k, v in gen.net.state_dict().items()}
        save_file(weights, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(export_metadata(gen), indent=2) + "\n")
        os.replace(tmp, out)  # the folder appears whole or not at all
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # what a failure left; after the rename there is nothing


def _write_torchscript(gen: TrainedGenerator, out: Path) -> None:
    z, y = _example_inputs(gen)
    with torch.no_grad(), _quiet_deprecations():
        traced = torch.jit.trace(gen.net.eval(), (z, y), check_trace=False)
    # a batch size other than the traced one must work: tracing can freeze shapes that depend on the batch
    z3, y3 = z[:3], y[:3]
    with torch.no_grad():
        if not torch.allclose(traced(z3, y3), gen.net(z3, y3), atol=1e-5):
            raise RuntimeError("the traced generator does not reproduce the generator at another batch size")
    def write(tmp: Path) -> None:
        with _quiet_deprecations():
            torch.jit.save(traced, str(tmp), _extra_files={"acgan.json": json.dumps(export_metadata(gen))})

    _atomic(out, write)


def _write_onnx(gen: TrainedGenerator, out: Path) -> None:
    try:
        import onnx
    except ImportError:
        raise UserError("--format onnx needs the onnx package: pip install 'acgan[export]'") from None
    z, y = _example_inputs(gen)

    def write(tmp: Path) -> None:
        # The TorchScript-based exporter: these nets are plain convolutions, and it needs no extra packages.
        with _quiet_deprecations():
            torch.onnx.export(gen.net.eval(), (z, y), str(tmp), input_names=["z", "y"], output_names=["images"],
                              dynamic_axes={"z": {0: "n"}, "y": {0: "n"}, "images": {0: "n"}},
                              opset_version=ONNX_OPSET, dynamo=False)
        model = onnx.load(str(tmp))
        for key, value in export_metadata(gen).items():
            model.metadata_props.add(key=key, value=json.dumps(value))
        onnx.save(model, str(tmp))
        check_onnx(tmp, gen)

    _atomic(out, write)


def check_onnx(path: Path, gen: TrainedGenerator) -> float:
    """Run the ONNX file with onnxruntime (where installed) on 3 images; the largest difference from torch."""
    try:
        import onnxruntime
    except ImportError:
        return float("nan")  # written but not checked here; the test extra has onnxruntime
    z, y = _example_inputs(gen, 3)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {"z": z.numpy(), "y": y.numpy()})[0])
    with torch.no_grad():
        diff = (got - gen.net(z, y)).abs().max().item()
    if not diff <= ONNX_TOLERANCE:
        raise RuntimeError(f"the ONNX generator differs from torch's by {diff:g} (tolerance {ONNX_TOLERANCE:g})")
    return diff


@contextlib.contextmanager
def _quiet_deprecations() -> Iterator[None]:
    """TorchScript and the TorchScript-based ONNX exporter are deprecated, yet they are what runs without acgan."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.")
        warnings.filterwarnings("ignore", message=r".*(deprecated|legacy TorchScript)", category=DeprecationWarning)
        yield


def _atomic(out: Path, write: Callable[[Path], None]) -> None:
    """Write through a temp file in the same folder and rename, so a failure leaves nothing half-written."""
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
