"""Helpers for tests/test_data.py: tiny CIFAR files in the official format, and image folder trees."""

from __future__ import annotations

import contextlib
import pickle
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from acgan.data import ImageDataset

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]

CIFAR_LAYOUT = {
    # name: (batch dir, meta file, names key, labels key, train files, test files, num classes)
    "cifar10": ("cifar-10-batches-py", "batches.meta", b"label_names", b"labels",
                [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], 10),
    "cifar100": ("cifar-100-python", "meta", b"fine_label_names", b"fine_labels", ["train"], ["test"], 100),
}


def write_pickle(path: Path, obj: object, numpy1: bool = False) -> None:
    """Pickle like the official files: protocol 2, bytes keys; numpy1 names globals as numpy 1.x does."""
    data = pickle.dumps(obj, protocol=2)
    # Protocol 2 names globals as newline-terminated text, so the module can be renamed in place.
    path.write_bytes(data.replace(b"numpy._core.", b"numpy.core.") if numpy1 else data)


def make_batch(num_images: int, num_classes: int, rng: np.random.Generator,
               labels_key: bytes = b"labels") -> dict[bytes, object]:
    """One batch dict in the official layout, with random pixels and labels."""
    labels = rng.integers(0, num_classes, num_images)
    return {
        b"batch_label": b"training batch",
        # CIFAR-100 labels as numpy scalars, so the multiarray.scalar path is exercised too.
        labels_key: list(labels) if labels_key == b"fine_labels" else [int(v) for v in labels],
        b"data": rng.integers(0, 256, (num_images, 3072), dtype=np.uint8),
        b"filenames": [f"img_{i}.png".encode() for i in range(num_images)],
    }


def write_cifar(parent_dir: Path, name: str = "cifar10", num_per_file: int = 20, seed: int = 0,
                numpy1: bool = False) -> dict[str, dict[bytes, object]]:
    """Write parent_dir/<batch dir>/ with every file; returns the batch dicts by file name."""
    batch_name, meta_file, names_key, labels_key, train, test, num_classes = CIFAR_LAYOUT[name]
    batch_dir = parent_dir / batch_name
    batch_dir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    names = CIFAR10_NAMES if num_classes == 10 else [f"class_{i:03d}" for i in range(num_classes)]
    write_pickle(batch_dir / meta_file, {names_key: [n.encode() for n in names], b"num_vis": 3072})
    batches = {}
    for file_name in train + test:
        batches[file_name] = make_batch(num_per_file, num_classes, rng, labels_key)
        write_pickle(batch_dir / file_name, batches[file_name], numpy1)
    (batch_dir / "readme.html").write_text("<html></html>")
    return batches


def make_targz(src_dir: Path, archive: Path) -> Path:
    """Pack src_dir into archive (.tar.gz) under its own name, like the official archive."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src_dir, arcname=src_dir.name)
    return archive


def solid(size: tuple[int, int], colour: tuple[int, ...], mode: str = "RGB") -> Image.Image:
    """A single-colour image."""
    return Image.new(mode, size, colour if len(colour) > 1 else colour[0])


def write_folder_tree(root: Path) -> None:
    """Three classes covering grayscale, RGBA, palette, 16-bit, JPEG, non-square and non-image files."""
    a, b, c = root / "alpha", root / "beta", root / "gamma"
    for d in (a, b, c, root / ".hidden"):
        d.mkdir(parents=True)
    solid((40, 40), (200, 10, 30)).save(a / "00_rgb.png")
    solid((33, 50), (77,), "L").save(a / "01_grey.png")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[:16] = (255, 0, 0, 255)  # top half opaque red, bottom half fully transparent
    Image.fromarray(rgba, "RGBA").save(a / "02_rgba.PNG")
    solid((32, 32), (0, 0, 255)).save(a / "notes.png.bak", format="PNG")  # not an image extension: ignored
    (a / "README.txt").write_text("not an image")
    palette = Image.new("P", (64, 64), 3)
    palette.putpalette([0, 0, 0, 10, 20, 30, 40, 50, 60, 12, 200, 34] + [0] * 756)
    palette.save(b / "10_palette.png")
    Image.fromarray(np.full((48, 48), 257 * 100, np.uint16)).save(b / "11_sixteen.png")
    solid((64, 64), (30, 160, 90)).save(b / "12_photo.jpg", quality=95)
    wide = np.zeros((64, 192, 3), np.uint8)
    wide[:, :64] = (255, 0, 0)
    wide[:, 64:128] = (0, 255, 0)
    wide[:, 128:] = (0, 0, 255)
    Image.fromarray(wide).save(c / "20_wide.png")
    solid((20, 20), (5, 5, 5)).save(c / "21_small.bmp")
    solid((20, 20), (250, 250, 250)).save(c / "22_img.webp", lossless=True)
    solid((20, 20), (1, 2, 3)).save(root / ".hidden" / "x.png")
    (root / "stray_file.png").write_bytes(b"files at the top level are not classes")


def expected(batches: dict, files: list[str], labels_key: bytes = b"labels") -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) and labels that the loader must return for these batch files."""
    data = np.concatenate([batches[f][b"data"] for f in files])
    labels = np.concatenate([batches[f][labels_key] for f in files])
    return data.reshape(-1, 3, 32, 32), labels


class Payload:
    """Pickles to a call that creates a marker file when unpickled by an unrestricted loader."""

    def __init__(self, call: tuple) -> None:
        self.call = call

    def __reduce__(self) -> tuple:
        return self.call


def tagged_dataset(num_images: int, size: int = 8) -> ImageDataset:
    """Image i is tagged with i in channels 0/1 and has a left-right ramp in channel 2, so flips show."""
    ids = torch.arange(num_images)
    images = torch.empty(num_images, 3, size, size, dtype=torch.uint8)
    images[:, 0] = (ids % 256)[:, None, None].to(torch.uint8)
    images[:, 1] = (ids // 256)[:, None, None].to(torch.uint8)
    images[:, 2] = (torch.arange(size) * 30).to(torch.uint8)
    return ImageDataset(images, ids % 7, tuple("abcdefg"))


def decode_ids(x: torch.Tensor) -> torch.Tensor:
    """Recover the tag of each normalized image."""
    raw = ((x[:, :2, 0, 0] + 1) * 127.5).round().long()
    return raw[:, 0] + 256 * raw[:, 1]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """One intra-op thread: tiny convolutions slow down several-fold when threads oversubscribe the CPU."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def tiny_cnn(num_classes: int = 10) -> torch.nn.Module:
    """A three-layer strided CNN classifier for 32x32 RGB images."""
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, num_classes),
    )


def generator_checkpoint(path: Path, arch: str = "paper", step: int = 7, class_names: tuple[str, ...] | None = None,
                         **config: object) -> Path:
    """A checkpoint as acgan train writes it, of freshly initialised nets (no training): for sampling, serving
    and exporting tests, which need a real file but not a good generator."""
    from acgan.checkpoint import atomic_save
    from acgan.config import TrainConfig
    from acgan.data import SHAPE_NAMES
    from acgan.models import nets_for

    class_names = class_names or SHAPE_NAMES
    cfg = TrainConfig(**{"dataset": "shapes", "arch": arch, **config}).resolved()
    torch.manual_seed(0)
    G, D = nets_for(cfg, len(class_names))
    with torch.no_grad():  # BatchNorm's running statistics as after training, not the (0, 1) of a fresh net
        for m in G.modules():
            if isinstance(m, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    state = {"G": G.state_dict(), "D": D.state_dict(), "config": cfg.to_dict(), "step": step,
             "class_names": list(class_names)}
    atomic_save(state, path)
    return path


def with_ema(path: Path, out: Path) -> Path:
    """A copy of a generator checkpoint with a G_ema whose every weight is G's + 1: the two draw different images."""
    from acgan.checkpoint import atomic_save

    state = torch.load(path, weights_only=True)
    state["G_ema"] = {k: v + 1 if v.is_floating_point() else v.clone() for k, v in state["G"].items()}
    atomic_save(state, out)
    return out
