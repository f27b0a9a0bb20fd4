"""Hostile and broken data files: each is decoded correctly or refused with one line naming the file.

Complements tests/test_data.py (malicious CIFAR pickles, truncated batches, wrong shapes, label ranges,
corrupt images, the common image modes): what is here, it does not cover.
"""

from __future__ import annotations

import os
import struct
import tarfile
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from data_fixtures import make_targz, write_cifar, write_folder_tree, write_pickle
from PIL import Image

from acgan.data import cifar as cifar_module
from acgan.data import folder as folder_module
from acgan.data import load_dataset
from acgan.errors import UserError

# ---------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("labels", [[0.7] * 20, np.full(20, 3.0), [b"3"] * 20, ["3"] * 20, [2**70] * 20])
def test_labels_that_only_look_like_integers_are_refused(tmp_path: Path, labels: object) -> None:
    batches = write_cifar(tmp_path)
    write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {**batches["test_batch"], b"labels": labels})
    with pytest.raises(UserError, match="test_batch is not a CIFAR batch: its labels are not integers"):
        load_dataset("cifar10", tmp_path, split="test")


def test_numpy_integer_labels_of_any_width_are_accepted(tmp_path: Path) -> None:
    batches = write_cifar(tmp_path)
    labels = np.asarray(batches["test_batch"][b"labels"], dtype=np.uint8)
    write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {**batches["test_batch"], b"labels": labels})
    assert load_dataset("cifar10", tmp_path, split="test").labels.tolist() == labels.tolist()


@pytest.mark.parametrize(("meta", "message"), [
    ({b"label_names": [b"cat"] * 9}, "batches.meta is not a CIFAR meta file: expected 10 label_names"),
    ({b"other": 1}, "batches.meta is not a CIFAR meta file"),
    (["airplane"] * 10, "batches.meta is not a CIFAR file: it holds a list"),
])
def test_broken_meta_file_is_named(tmp_path: Path, meta: object, message: str) -> None:
    write_cifar(tmp_path)
    write_pickle(tmp_path / "cifar-10-batches-py" / "batches.meta", meta)
    with pytest.raises(UserError, match=message):
        load_dataset("cifar10", tmp_path, split="test")


@pytest.mark.parametrize("use_archive", [False, True])
def test_a_file_far_larger_than_cifar_is_refused_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        use_archive: bool) -> None:
    write_cifar(tmp_path / "src")
    root = tmp_path / "src"
    if use_archive:
        root = make_targz(root / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    # The limit scaled down to this tiny data set: test_batch (20 images, ~62 kB) stands in for a 10 GB member.
    monkeypatch.setattr(cifar_module, "MAX_FILE_BYTES", 10_000)
    real_load = cifar_module.load_cifar_pickle

    def load(data: bytes, source: str) -> object:
        assert "test_batch" not in source, "an oversized file was read and unpickled"
        return real_load(data, source)

    monkeypatch.setattr(cifar_module, "load_cifar_pickle", load)
    with pytest.raises(UserError, match=r"test_batch.* is [\d,]+ bytes, far larger than any CIFAR file"):
        load_dataset("cifar10", root, split="test")


def test_archive_members_that_are_links_are_not_followed(tmp_path: Path) -> None:
    write_cifar(tmp_path / "src")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for p in sorted((tmp_path / "src" / "cifar-10-batches-py").iterdir()):
            if p.name != "test_batch":
                tar.add(p, arcname=f"cifar-10-batches-py/{p.name}")
        link = tarfile.TarInfo("cifar-10-batches-py/test_batch")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    with pytest.raises(UserError, match="incomplete: missing test_batch"):
        load_dataset("cifar10", archive, split="test")


# ---------------------------------------------------------------- image folders


def _png_header(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height RGB pixels: a decompression bomb's first bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    write_folder_tree(tmp_path / "tree")
    return tmp_path / "tree"


@pytest.mark.parametrize(("width", "height", "pil_limit"), [
    (20_000, 20_000, "default"),  # past PIL's own bomb limit too
    (11_000, 10_000, "default"),  # past ours, where PIL would only warn and decode 330 MB
    (20_000, 20_000, None),       # a process that switched PIL's limit off is still protected
])
def test_decompression_bomb_is_refused_before_decoding(tree: Path, monkeypatch: pytest.MonkeyPatch, width: int,
                                                       height: int, pil_limit: str | None) -> None:
    if pil_limit is None:
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    (tree / "beta" / "bomb.png").write_bytes(_png_header(width, height))
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with pytest.raises(UserError, match=r"image \S*bomb.png is too large"):
            load_dataset("folder", tree)
    assert time.perf_counter() - start < 30  # refused from the header, not after decoding


def test_unreadable_image_is_named(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tree / "alpha" / "00_rgb.png"
    target.chmod(0)
    try:
        if os.access(target, os.R_OK):  # root reads anything: fail the open as the kernel would for others
            real_open = Image.open

            def open_(fp: object, *args: object, **kwargs: object) -> Image.Image:
                if Path(str(fp)) == target:
                    raise PermissionError(13, "Permission denied", str(fp))
                return real_open(fp, *args, **kwargs)

            monkeypatch.setattr(folder_module.Image, "open", open_)
        with pytest.raises(UserError, match=r"could not read image \S*alpha/00_rgb.png: .*Permission denied"):
            load_dataset("folder", tree)
    finally:
        target.chmod(0o644)


def test_dangling_link_is_named_not_skipped(tree: Path) -> None:
    (tree / "gamma" / "23_link.png").symlink_to(tree / "gone.png")
    with pytest.raises(UserError, match=r"could not read image \S*gamma/23_link.png"):
        load_dataset("folder", tree)


def test_empty_file_and_directories_with_image_names(tree: Path) -> None:
    (tree / "gamma" / "sub.png").mkdir()  # a directory is not an image: ignored
    assert len(load_dataset("folder", tree, image_size=8)) == 9
    (tree / "gamma" / "24_empty.jpg").write_bytes(b"")
    with pytest.raises(UserError, match=r"could not read image \S*24_empty.jpg"):
        load_dataset("folder", tree)


def test_empty_root_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty has no class subfolders"):
        load_dataset("folder", tmp_path / "empty")


def test_more_modes_transparency_bilevel_and_cmyk(tmp_path: Path) -> None:
    root = tmp_path / "modes"
    (root / "x").mkdir(parents=True)
    palette = Image.new("P", (20, 20), 0)
    palette.putpalette([1, 2, 3, 10, 20, 30] + [0] * 762)
    palette.paste(1, (0, 0, 20, 10))  # top half colour 1, bottom half colour 0, which is transparent
    palette.save(root / "x" / "0_palette_trns.png", transparency=0)
    Image.new("LA", (20, 20), (60, 255)).save(root / "x" / "1_la.png")
    Image.new("LA", (20, 20), (60, 0)).save(root / "x" / "2_la_clear.png")
    Image.new("1", (20, 20), 1).save(root / "x" / "3_bilevel.png")
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(root / "x" / "4_cmyk.jpg", quality=95)
    px = load_dataset("folder", root, image_size=20).images.permute(0, 2, 3, 1).int()  # (5, 20, 20, 3)
    assert (px[0, :8] == np.array([10, 20, 30])).all() and (px[0, -8:] == 255).all()  # transparent -> white
    assert (px[1] == 60).all() and (px[2] == 255).all() and (px[3] == 255).all()
    assert (px[4] - np.array([255, 0, 0])).abs().max() <= 3  # CMYK red, lossy
