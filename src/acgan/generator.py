"""A trained generator as one object: load it from a checkpoint, an exported folder or a packaged name; draw by class.

    G = acgan.load_generator("cifar10")           # the CIFAR-10 generator shipped in the package (acgan.zoo)
    G = acgan.load_generator("runs/00003-cifar10/checkpoints/last.pt")
    G.class_names                                 # ('airplane', 'automobile', ...)
    x = G.sample(class_="cat", num=16, seed=0)    # uint8 (16, 3, 32, 32)

The same seed gives the same images on the same machine, whatever was drawn before: every call seeds its own
torch.Generator and never touches the global RNG.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from acgan.checkpoint import load_checkpoint
from acgan.config import EVAL_DEFAULTS, GENERATOR_WEIGHTS, TrainConfig, config_from_dict
from acgan.data import to_uint8
from acgan.device import resolve_device
from acgan.errors import UserError
from acgan.models import generator_for
from acgan.zoo import PRETRAINED, in_package, pretrained_dir

EXPORT_FORMAT = 1  # the version of an exported folder's config.json
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"  # the Hugging Face Hub layout
GENERATE_BATCH = 500


@dataclass(frozen=True, eq=False)
class TrainedGenerator:
    """G (its EMA when the run kept one) in eval mode, with what is needed to use it."""

    net: nn.Module
    class_names: tuple[str, ...]
    config: TrainConfig  # the resolved training config: arch, nz, image_size, g_cond, dataset, ...
    step: int
    device: torch.device
    source: str  # the checkpoint entry the weights came from: "G_ema" or "G"

    @property
    def nz(self) -> int:
        """Noise dimensions."""
        return self.config.nz

    @property
    def image_size(self) -> int:
        """Side of the square images, in pixels."""
        return self.config.image_size

    def class_index(self, spec: str | int) -> int:
        """A class by index (3, '3') or name ('cat', any case) -> its index; unknown -> UserError listing them."""
        return resolve_class(str(spec), self.class_names)

    def generate(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, 3, S, S) of classes y (N,) from noise z (N, nz)."""
        return generate(self.net, z, y)

    def noise(self, num: int, seed: int) -> torch.Tensor:
        """num noise vectors (num, nz) from a generator of their own, so a seed always gives the same ones."""
        return torch.randn(num, self.nz, generator=torch.Generator().manual_seed(seed))

    def sample(self, class_: str | int | None = None, num: int = 16, seed: int = 0) -> torch.Tensor:
        """num images of one class (N, 3, S, S); with class_=None, num columns of every class, one class per row."""
        if class_ is not None:
            return self.generate(self.noise(num, seed), torch.full((num,), self.class_index(class_)))
        return self.generate(*class_grid_inputs(len(self.class_names), num, self.nz, seed))

    def sweep(self, num: int = 4, seed: int = 0) -> torch.Tensor:
        """num rows, each one z through every class (num*K, 3, S, S): z carries style, y carries class."""
        K = len(self.class_names)
        z = self.noise(num, seed).repeat_interleave(K, dim=0)
        return self.generate(z, torch.arange(K).repeat(num))

    def interpolate(self, class_: str | int | None = None, steps: int = 10, seed: int = 0) -> torch.Tensor:
        """A spherical path between two z in `steps` points: one row for class_, or one row per class."""
        z0, z1 = self.noise(2, seed)
        path = slerp(z0, z1, torch.linspace(0, 1, steps))  # (steps, nz)
        classes = [self.class_index(class_)] if class_ is not None else list(range(len(self.class_names)))
        y = torch.tensor(classes).repeat_interleave(steps)
        return self.generate(path.repeat(len(classes), 1), y)


def resolve_class(spec: str, class_names: tuple[str, ...]) -> int:
    """A class given by index ('3') or name ('cat', any case) -> its index; unknown -> UserError listing them."""
    text = spec.strip()
    if text.isdigit() and int(text) < len(class_names):
        return int(text)
    lowered = [c.lower() for c in class_names]
    if text.lower() in lowered:
        return lowered.index(text.lower())
    shown = ", ".join(class_names[:20]) + (", ..." if len(class_names) > 20 else "")
    raise UserError(f"unknown class {text!r}: use an index 0..{len(class_names) - 1} or one of {shown}")


@torch.no_grad()
def generate(G: nn.Module, z: torch.Tensor, y: torch.Tensor, batch_size: int = GENERATE_BATCH) -> torch.Tensor:
    """uint8 images (N, 3, S, S) of classes y from noise z, in batches, on G's device."""
    device = next(G.parameters()).device
    out = [to_uint8(G(z[i:i + batch_size].to(device), y[i:i + batch_size].to(device)))
           for i in range(0, len(z), batch_size)]
    return torch.cat(out)


def class_grid_inputs(num_classes: int, num_per_class: int, nz: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """z and y for a grid with one row per class; column j uses the same z in every row."""
    z = torch.randn(num_per_class, nz, generator=torch.Generator().manual_seed(seed))  # (n, nz)
    z = z.repeat(num_classes, 1)  # (K*n, nz): row-major, so each row is one class
    y = torch.arange(num_classes).repeat_interleave(num_per_class)  # (K*n,)
    return z, y


def slerp(z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation (stays on the Gaussian shell, unlike a straight line) at fractions t."""
    cos = (z0 * z1).sum() / (z0.norm() * z1.norm())
    omega = torch.arccos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
    t = t[:, None]
    return (torch.sin((1 - t) * omega) * z0 + torch.sin(t * omega) * z1) / torch.sin(omega)


def load_generator(path: str | Path, device: str | torch.device = "auto",
                   weights: str = EVAL_DEFAULTS.weights) -> TrainedGenerator:
    """A trained generator from a checkpoint file (acgan train), an exported folder or a packaged name ("cifar10").

    A checkpoint file or exported folder of the user's comes first, even one called cifar10 (see packaged_dir).
    weights="raw" loads G as trained instead of its EMA: the EMA lags early in a run, and comparing the two
    tells whether it has caught up.
    """
    if weights not in GENERATOR_WEIGHTS:
        raise UserError(f"weights must be one of {', '.join(GENERATOR_WEIGHTS)}, got {weights!r}")
    packaged = packaged_dir(path)
    if packaged is not None and not (packaged / WEIGHTS_FILE).is_file():
        raise UserError(f"the packaged generator {str(path)!r} is not in this install ({packaged / WEIGHTS_FILE} "
                        "is missing: a source checkout before its weights were shipped?)")
    path = packaged if packaged is not None else Path(path)
    device = resolve_device(device) if isinstance(device, str) else device
    accepted = f"give a checkpoint file, an exported folder or a packaged generator: {', '.join(PRETRAINED)}"
    if path.is_dir():
        if not (path / WEIGHTS_FILE).is_file():
            raise UserError(f"{path} is a folder without {WEIGHTS_FILE}: {accepted}")
        if weights == "raw":
            raise UserError(f"{path} is an export, which holds one generator: the raw G is in the run's checkpoint")
        return _from_export(path, device)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path} ({accepted})")
    state = load_checkpoint(path, map_location=device)
    config = config_from_dict(state["config"]).resolved()  # older checkpoints name no arch: the paper's
    class_names = tuple(state["class_names"])
    source = "G_ema" if weights == "ema" and state.get("G_ema") is not None else "G"
    return _assemble(state[source], class_names, config, int(state["step"]), device, source)


def packaged_dir(spec: str | Path) -> Path | None:
    """The package folder that `spec` names ("cifar10"), or None when spec is a path to load as it is.

    A user's own checkpoint file or exported folder wins over a packaged name: their file comes first. Anything
    else spelled as a name (nothing there, or a data folder cifar10/ without weights) means the packaged one.
    """
    path = Path(spec)
    if path.is_file() or (path / WEIGHTS_FILE).is_file():
        return None
    return pretrained_dir(str(path)) if str(path) in PRETRAINED else None


def output_parent(spec: str | Path) -> Path:
    """The folder commands write into about a generator by default: its run folder, or "." for a packaged one.

    A checkpoint's run folder is its grandparent (<run>/checkpoints/last.pt). A packaged generator has no run, and
    its folder lies in site-packages, read-only and not the user's: its output goes to the current folder.
    """
    if packaged_dir(spec) is not None or in_package(Path(spec)):
        return Path(".")
    return Path(spec).resolve().parent.parent


def _assemble(params: dict[str, torch.Tensor], class_names: tuple[str, ...], config: TrainConfig, step: int,
              device: torch.device, source: str) -> TrainedGenerator:
    net = generator_for(config, len(class_names)).to(device)
    try:
        net.load_state_dict(params)
    except RuntimeError:
        raise UserError(f"the weights do not fit a {config.arch} generator of {len(class_names)} classes") from None
    return TrainedGenerator(net.eval(), class_names, config, step, device, source)


def _from_export(folder: Path, device: torch.device) -> TrainedGenerator:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        meta = json.loads((folder / CONFIG_FILE).read_text())
        weights = load_file(str(folder / WEIGHTS_FILE), device="cpu")
    except (OSError, ValueError, SafetensorError) as e:
        raise UserError(f"{folder} is not a readable exported generator: {e}") from None
    if not isinstance(meta, dict) or meta.get("acgan_export") != EXPORT_FORMAT:
        raise UserError(f"{folder / CONFIG_FILE} is not an acgan export (format {EXPORT_FORMAT})")
    config = config_from_dict(meta["train_config"]).resolved()
    # exports before "source" was recorded took G_ema whenever the run kept one
    source = meta.get("source", "G_ema" if config.ema_decay > 0 else "G")
    return _assemble(weights, tuple(meta["class_names"]), config, int(meta["step"]), device, source)
