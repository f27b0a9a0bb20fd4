"""Spec for acgan.data: CIFAR, folder and shapes loaders, and the device-resident EpochSampler."""

from __future__ import annotations

import hashlib
import os
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import (
    CIFAR10_NAMES,
    Payload,
    decode_ids,
    expected,
    make_targz,
    one_thread,
    tagged_dataset,
    tiny_cnn,
    write_cifar,
    write_folder_tree,
    write_pickle,
)
from PIL import Image

from acgan.data import (
    CIFAR_DOWNLOADS,
    SHAPE_NAMES,
    EpochSampler,
    ImageDataset,
    load_dataset,
    make_shapes,
)
from acgan.errors import UserError

REAL_CIFAR10 = Path(__file__).resolve().parents[2] / "shared" / "cifar10" / "cifar-10-python.tar.gz"


# ---------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("layout", ["parent", "batch_dir", "archive", "parent_with_archive"])
def test_cifar10_round_trips_from_every_layout(tmp_path: Path, layout: str) -> None:
    batches = write_cifar(tmp_path / "src")
    batch_dir = tmp_path / "src" / "cifar-10-batches-py"
    if layout == "parent":
        root = tmp_path / "src"
    elif layout == "batch_dir":
        root = batch_dir
    else:
        (tmp_path / "arc").mkdir()
        root = make_targz(batch_dir, tmp_path / "arc" / "cifar-10-python.tar.gz")
        root = root.parent if layout == "parent_with_archive" else root
    train = load_dataset("cifar10", root, split="train")
    test = load_dataset("cifar10", root, split="test")
    x, y = expected(batches, [f"data_batch_{i}" for i in range(1, 6)])
    assert train.images.dtype == torch.uint8 and train.images.shape == (100, 3, 32, 32)
    assert np.array_equal(train.images.numpy(), x) and np.array_equal(train.labels.numpy(), y)
    assert train.labels.dtype == torch.int64
    assert train.class_names == tuple(CIFAR10_NAMES)
    # The row is the R, G and B planes, each row-major: pixel (row 2, col 3) of G is at 1024 + 2 * 32 + 3.
    row = batches["test_batch"][b"data"][0]
    assert test.images[0, 1, 2, 3] == row[1024 + 2 * 32 + 3] and test.images[0, 2, 31, 0] == row[2048 + 31 * 32]
    assert len(test) == 20 and test.images.is_contiguous()


@pytest.mark.parametrize("use_archive", [False, True])
def test_cifar100_uses_fine_labels_and_names(tmp_path: Path, use_archive: bool) -> None:
    batches = write_cifar(tmp_path, "cifar100", num_per_file=30, numpy1=not use_archive)
    root = tmp_path
    if use_archive:
        root = make_targz(tmp_path / "cifar-100-python", tmp_path / "c100.tar.gz")
    train = load_dataset("cifar100", root)
    x, y = expected(batches, ["train"], b"fine_labels")
    assert np.array_equal(train.images.numpy(), x) and np.array_equal(train.labels.numpy(), y)
    assert train.num_classes == 100 and train.class_names[7] == "class_007"
    assert len(load_dataset("cifar100", root, split="test")) == 30


@pytest.mark.parametrize("kind", ["os.system", "builtins.exec", "nested_in_batch"])
def test_malicious_pickle_is_refused_without_running_code(tmp_path: Path, kind: str) -> None:
    batch_dir = tmp_path / "cifar-10-batches-py"
    write_cifar(tmp_path)
    marker = tmp_path / "pwned"
    if kind == "builtins.exec":
        payload = Payload((exec, (f"open({str(marker)!r}, 'w').close()",)))
    else:
        payload = Payload((os.system, (f"touch '{marker}'",)))
    obj = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, payload]} if kind == "nested_in_batch" \
        else payload
    write_pickle(batch_dir / "data_batch_2", obj)
    # The payload is live: an ordinary unpickler runs it (proves the refusal below is what stops it).
    pickle.loads((batch_dir / "data_batch_2").read_bytes())
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UserError, match=r"refusing to load .*data_batch_2: it references \w+\.(system|exec)"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()


def test_truncated_batch_and_archive_are_named(tmp_path: Path) -> None:
    write_cifar(tmp_path / "src")
    archive = make_targz(tmp_path / "src" / "cifar-10-batches-py", tmp_path / "cifar-10-python.tar.gz")
    archive.write_bytes(archive.read_bytes()[:-400])
    with pytest.raises(UserError, match="could not read archive .*cifar-10-python.tar.gz"):
        load_dataset("cifar10", archive)
    path = tmp_path / "src" / "cifar-10-batches-py" / "data_batch_3"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="data_batch_3: it is truncated"):
        load_dataset("cifar10", tmp_path / "src")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({b"data": np.zeros((20, 3000), np.uint8)}, r"data must be \(n, 3072\) uint8"),
        ({b"data": np.zeros((20, 3072), np.float32)}, r"data must be \(n, 3072\) uint8"),
        ({b"labels": [10] * 20}, r"labels outside \[0, 10\)"),
        ({b"labels": [-1] * 20}, r"labels outside \[0, 10\)"),
        ({b"labels": [0] * 19}, "20 images but labels"),
        ({b"labels": ["cat"] * 20}, "labels are not integers"),
        ({b"labels": ...}, "is not a CIFAR batch: it has no 'labels' entry"),
        ([1, 2, 3], "is not a CIFAR file: it holds a list"),
    ],
)
def test_invalid_batch_contents_raise_user_error(tmp_path: Path, change: dict | list, message: str) -> None:
    batches = write_cifar(tmp_path)
    obj = change
    if isinstance(change, dict):  # merged into a valid batch; ... deletes the key
        obj = {k: v for k, v in {**batches["test_batch"], **change}.items() if v is not ...}
    write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", obj)
    with pytest.raises(UserError, match=f"test_batch.*{message}"):
        load_dataset("cifar10", tmp_path, split="test")


def test_missing_batches_are_listed(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    (tmp_path / "cifar-10-batches-py" / "data_batch_5").unlink()
    with pytest.raises(UserError, match="incomplete: missing data_batch_4, data_batch_5"):
        load_dataset("cifar10", tmp_path)
    assert len(load_dataset("cifar10", tmp_path, split="test")) == 20  # the test split needs neither


def test_absent_data_says_where_it_looked_and_suggests_download(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"{tmp_path}.*--download"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(UserError, match="data directory"):
        load_dataset("cifar10", None)


def test_download_checks_md5_and_renames_into_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batches = write_cifar(tmp_path / "server")
    archive = make_targz(tmp_path / "server" / "cifar-10-batches-py", tmp_path / "server" / "official.tar.gz")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    root = tmp_path / "data" / "nested"
    monkeypatch.setitem(CIFAR_DOWNLOADS, "cifar10", (archive.as_uri(), "0" * 32))
    with pytest.raises(UserError, match="corrupt.*expected 0{32}"):
        load_dataset("cifar10", root, download=True)
    assert list(root.iterdir()) == []  # the temp file is gone too
    monkeypatch.setitem(CIFAR_DOWNLOADS, "cifar10", (archive.as_uri(), md5))
    test = load_dataset("cifar10", root, split="test", download=True)
    assert np.array_equal(test.images.numpy(), expected(batches, ["test_batch"])[0])
    assert sorted(p.name for p in root.iterdir()) == ["cifar-10-python.tar.gz"]
    # Present now, so a second call must not download: an unusable URL proves it.
    monkeypatch.setitem(CIFAR_DOWNLOADS, "cifar10", ("file:///nonexistent/x.tar.gz", md5))
    assert len(load_dataset("cifar10", root, split="test", download=True)) == 20


@pytest.mark.parametrize("url", ["file:///nonexistent/dir/cifar.tar.gz", "http://127.0.0.1:9/cifar.tar.gz"])
def test_unreachable_download_is_a_user_error(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(CIFAR_DOWNLOADS, "cifar10", (url, "0" * 32))
    with pytest.raises(UserError, match=f"could not download {url}: .*put cifar-10-python.tar.gz in"):
        load_dataset("cifar10", tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.cifar
def test_real_cifar10_archive() -> None:
    if not REAL_CIFAR10.exists():
        pytest.skip(f"{REAL_CIFAR10} is absent")
    train = load_dataset("cifar10", REAL_CIFAR10)
    test = load_dataset("cifar10", REAL_CIFAR10.parent, split="test")
    assert train.images.shape == (50_000, 3, 32, 32) and test.images.shape == (10_000, 3, 32, 32)
    assert torch.equal(train.labels.bincount(), torch.full((10,), 5000))
    assert torch.equal(test.labels.bincount(), torch.full((10,), 1000))
    assert train.class_names[0] == "airplane" and train.class_names == test.class_names
    assert 100 < train.images.float().mean() < 140  # real photos, not blank or garbled data


# ---------------------------------------------------------------- folder


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    write_folder_tree(tmp_path / "tree")
    return tmp_path / "tree"


def test_folder_decodes_every_mode(tree: Path) -> None:
    ds = load_dataset("folder", tree, image_size=16)
    assert ds.class_names == ("alpha", "beta", "gamma")  # hidden directories and files are skipped
    assert ds.images.shape == (9, 3, 16, 16) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    px = ds.images.permute(0, 2, 3, 1)  # (N, 16, 16, 3) for colour comparisons
    assert (px[0] == torch.tensor([200, 10, 30], dtype=torch.uint8)).all()
    assert (px[1] == 77).all()  # grayscale L
    # Opaque half stays red, transparent half is composited onto white (LANCZOS rings by a level or two).
    assert (px[2, :6].int() - torch.tensor([255, 0, 0])).abs().max() <= 2
    assert (px[2, -6:].int() - 255).abs().max() <= 2
    assert (px[3] == torch.tensor([12, 200, 34], dtype=torch.uint8)).all()  # palette
    assert (px[4] == 100).all()  # 16-bit 25700 scales to 100, not clipped to 255
    assert (px[5].int() - torch.tensor([30, 160, 90])).abs().max() <= 4  # JPEG, lossy
    assert (px[7] == 5).all() and (px[8] == 250).all()  # bmp, webp


def test_folder_center_crops_non_square_images(tree: Path) -> None:
    ds = load_dataset("folder", tree, image_size=32)
    wide = ds.images[6].permute(1, 2, 0).int()  # (32, 32, 3): red | green | blue thirds, cropped to green
    assert (wide[:, 4:-4] == torch.tensor([0, 255, 0])).all()
    assert wide[..., 0].float().mean() < 10 and wide[..., 2].float().mean() < 10


def test_folder_parallel_decode_matches_serial(tree: Path) -> None:
    serial = load_dataset("folder", tree, image_size=24, num_workers=0)
    parallel = load_dataset("folder", tree, image_size=24, num_workers=2)
    assert torch.equal(serial.images, parallel.images) and torch.equal(serial.labels, parallel.labels)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("content", [b"definitely not a png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "truncated"])
def test_corrupt_image_is_named(tree: Path, content: bytes | str, num_workers: int) -> None:
    bad = tree / "beta" / "13_bad.png"
    if content == "truncated":
        data = (tree / "beta" / "11_sixteen.png").read_bytes()
        content = data[: len(data) // 2]
    bad.write_bytes(content)
    with pytest.raises(UserError, match="13_bad.png"):
        load_dataset("folder", tree, num_workers=num_workers)


def test_oversized_image_is_refused(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from acgan.data import folder

    monkeypatch.setattr(folder, "MAX_IMAGE_PIXELS", 40 * 40 - 1)
    with pytest.raises(UserError, match="00_rgb.png is too large"):
        load_dataset("folder", tree)


def test_folder_structure_errors(tmp_path: Path, tree: Path) -> None:
    (tree / "delta").mkdir()
    (tree / "delta" / "only.txt").write_text("x")
    with pytest.raises(UserError, match="class folder .*delta has no images"):
        load_dataset("folder", tree)
    shutil.rmtree(tree / "delta")
    with pytest.raises(UserError, match="no test split"):
        load_dataset("folder", tree, split="test")
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(UserError, match="flat has no class subfolders"):
        load_dataset("folder", tmp_path / "flat")
    with pytest.raises(UserError, match="missing does not exist"):
        load_dataset("folder", tmp_path / "missing")


# ---------------------------------------------------------------- shapes


def test_shapes_is_deterministic_balanced_and_split() -> None:
    train = load_dataset("shapes", "/ignored", seed=3)
    assert train.images.shape == (10_000, 3, 32, 32) and train.images.dtype == torch.uint8
    assert torch.equal(train.labels.bincount(), torch.full((10,), 1000))
    assert train.class_names == SHAPE_NAMES and len(set(SHAPE_NAMES)) == 10
    small, again, other = make_shapes(20, seed=3), make_shapes(20, seed=3), make_shapes(20, seed=4)
    assert torch.equal(small.images, again.images) and torch.equal(small.labels, again.labels)
    assert small.content_hash() == again.content_hash()
    assert not torch.equal(small.images, other.images) and small.content_hash() != other.content_hash()
    test = load_dataset("shapes", None, split="test", seed=3)
    train_rows = {bytes(row) for row in train.images.flatten(1).numpy()}
    assert not any(bytes(row) in train_rows for row in test.images.flatten(1).numpy())
    assert len(train_rows) == 10_000  # no duplicate images either
    assert torch.equal(test.labels.bincount(), torch.full((10,), 1000))


def test_shapes_other_sizes_and_contrast() -> None:
    ds = make_shapes(5, seed=0, image_size=64)
    assert ds.images.shape == (50, 3, 64, 64) and ds.image_size == 64 and ds.num_classes == 10
    # Every image shows its shape: foreground and background differ clearly in (Rec. 601) luminance.
    grey = torch.einsum("nchw,c->nhw", ds.images.float(), torch.tensor([0.299, 0.587, 0.114])).flatten(1)
    assert ((grey.max(1).values - grey.min(1).values) > 50).all()


def test_small_cnn_learns_shapes_quickly() -> None:
    torch.manual_seed(0)
    train, test = make_shapes(100, seed=1), make_shapes(30, seed=2)
    net = tiny_cnn()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    sampler = EpochSampler(train, 50, device="cpu", seed=0)
    with one_thread():
        for epoch in range(20):  # 400 steps on 1,000 images
            for x, y in sampler.epoch(epoch):
                loss = torch.nn.functional.cross_entropy(net(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        with torch.no_grad():
            accuracy = (net(test.images.float() / 127.5 - 1).argmax(1) == test.labels).float().mean().item()
    assert accuracy > 0.9


# ---------------------------------------------------------------- ImageDataset, load_dataset


def test_image_dataset_properties_and_hash() -> None:
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    ds = ImageDataset(images, torch.tensor([0, 1, 2, 0, 1, 2]), ("a", "b", "c"))
    assert len(ds) == 6 and ds.num_classes == 3 and ds.image_size == 8
    assert ImageDataset(images.clone(), ds.labels.clone(), ("a", "b", "c")).content_hash() == ds.content_hash()
    changed = images.clone()
    changed[5, 2, 7, 7] ^= 1
    assert ImageDataset(changed, ds.labels, ("a", "b", "c")).content_hash() != ds.content_hash()
    assert ImageDataset(images, ds.labels, ("a", "b", "d")).content_hash() != ds.content_hash()
    with pytest.raises(ValueError, match="labels must lie"):
        ImageDataset(images, torch.tensor([0, 1, 2, 0, 1, 3]), ("a", "b", "c"))


def test_load_dataset_rejects_unknown_names_and_resizes_cifar(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown dataset 'mnist'"):
        load_dataset("mnist", tmp_path)
    with pytest.raises(UserError, match="unknown split 'val'"):
        load_dataset("shapes", None, split="val")
    write_cifar(tmp_path)
    small = load_dataset("cifar10", tmp_path, split="test", image_size=16)
    assert small.images.shape == (20, 3, 16, 16) and small.images.dtype == torch.uint8


# ---------------------------------------------------------------- EpochSampler


def test_sampler_covers_every_image_once_with_exact_flips() -> None:
    ds = tagged_dataset(600)
    sampler = EpochSampler(ds, 50, device="cpu", seed=1)
    assert sampler.num_batches == 12
    batches = list(sampler.epoch(0))
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert x.dtype == torch.float32 and x.shape == (600, 3, 8, 8) and y.dtype == torch.int64
    assert x.min() >= -1 and x.max() <= 1
    ids = decode_ids(x)
    assert sorted(ids.tolist()) == list(range(600)) and torch.equal(y, ids % 7)
    original = ds.images[ids].float() / 127.5 - 1
    flipped = torch.tensor([torch.equal(a, b.flip(2)) for a, b in zip(x, original, strict=True)])
    unflipped = torch.tensor([torch.equal(a, b) for a, b in zip(x, original, strict=True)])
    assert bool((flipped ^ unflipped).all())  # each image is exactly itself or its mirror image
    assert 0.4 < flipped.float().mean() < 0.6
    no_flip = torch.cat([b[0] for b in EpochSampler(ds, 50, device="cpu", seed=1, hflip=False).epoch(0)])
    assert torch.equal(no_flip, original)  # same order regardless of hflip, and nothing mirrored


def test_sampler_ranks_get_disjoint_equal_shards() -> None:
    ds = tagged_dataset(103)
    shards = []
    for rank in range(2):
        sampler = EpochSampler(ds, 10, device="cpu", seed=5, rank=rank, world_size=2)
        assert sampler.num_batches == 5
        batches = list(sampler.epoch(2))
        assert len(batches) == 5 and all(len(b[1]) == 10 for b in batches)
        shards.append(set(decode_ids(torch.cat([b[0] for b in batches])).tolist()))
    assert len(shards[0]) == len(shards[1]) == 50 and not shards[0] & shards[1]
    with pytest.raises(UserError, match="30 images, fewer than one batch per process"):
        EpochSampler(tagged_dataset(30), 16, device="cpu", seed=0, world_size=2)


def test_sampler_resume_and_epoch_order() -> None:
    ds = tagged_dataset(300)
    sampler = EpochSampler(ds, 32, device="cpu", seed=7)
    full = list(sampler.epoch(3))
    resumed = list(EpochSampler(ds, 32, device="cpu", seed=7).epoch(3, start=4))
    assert len(resumed) == len(full) - 4
    for (xa, ya), (xb, yb) in zip(full[4:], resumed, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert list(sampler.epoch(3, start=sampler.num_batches)) == []
    order = [decode_ids(torch.cat([b[0] for b in sampler.epoch(e)])) for e in (3, 4)]
    assert torch.equal(order[0], decode_ids(torch.cat([b[0] for b in full])))
    assert not torch.equal(order[0], order[1])
    other_seed = decode_ids(torch.cat([b[0] for b in EpochSampler(ds, 32, device="cpu", seed=8).epoch(3)]))
    assert not torch.equal(order[0], other_seed)


def test_shapes_generation_is_fast() -> None:
    start = time.perf_counter()
    make_shapes(2000, seed=0)
    assert time.perf_counter() - start < 10  # 20,000 images; the budget is 50,000 in 10 s
