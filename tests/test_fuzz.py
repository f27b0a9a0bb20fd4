"""Fuzzing the loaders of untrusted files: CIFAR batches, image folders and checkpoints.

Whatever the bytes, a loader either returns or raises UserError (one line naming the file); any other
exception, or a hang past the deadline, is a bug.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import write_cifar
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from acgan.checkpoint import atomic_save, load_checkpoint
from acgan.data import load_dataset
from acgan.data.folder import load_image
from acgan.errors import UserError

# No example database: the suite must not write .hypothesis/ into the working tree.
# The deadline is generous for a loaded machine: each example takes milliseconds, a hang takes forever.
FUZZ = settings(max_examples=80, deadline=5000, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """original with a few random byte flips, overwrites, insertions, deletions and truncations."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, draw(st.integers(0, 255))]))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 64))]
        else:
            del data[pos:]
    return bytes(data)


def _must_be_clean(call: object, *args: object) -> None:
    """Run the loader: success or a one-line UserError, nothing else."""
    try:
        call(*args)  # type: ignore[operator]
    except UserError as e:
        assert "\n" not in str(e).strip(), f"error is not one line: {e!r}"


# ---------------------------------------------------------------- CIFAR batches


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root, num_per_file=4)
    return root


def _valid_batch(protocol: int) -> bytes:
    rng = np.random.default_rng(0)
    batch = {b"batch_label": b"testing batch 1 of 1", b"labels": [int(v) for v in rng.integers(0, 10, 4)],
             b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"filenames": [b"a.png"] * 4}
    return pickle.dumps(batch, protocol=protocol)


def _load_test_batch(root: Path, data: bytes) -> None:
    (root / "cifar-10-batches-py" / "test_batch").write_bytes(data)
    ds = load_dataset("cifar10", root, split="test")
    assert ds.images.dtype == torch.uint8 and ds.images.shape[1:] == (3, 32, 32)


@FUZZ
@given(data=st.binary(max_size=4096))
def test_fuzz_cifar_random_bytes(cifar_root: Path, data: bytes) -> None:
    _must_be_clean(_load_test_batch, cifar_root, data)


@FUZZ
@given(data=st.sampled_from([2, 5]).flatmap(lambda proto: mutated(_valid_batch(proto))))
def test_fuzz_cifar_mutated_batch(cifar_root: Path, data: bytes) -> None:
    _must_be_clean(_load_test_batch, cifar_root, data)


_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), st.binary(max_size=8),
                  st.text(max_size=8),
                  hnp.arrays(hnp.scalar_dtypes(), hnp.array_shapes(min_dims=0, max_dims=3, max_side=4)))
_values = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner), max_leaves=8)
_data_entry = st.one_of(
    _values,
    hnp.arrays(st.sampled_from([np.uint8, np.int64, np.float32]),
               st.sampled_from([(0, 3072), (2, 3072), (2, 3071), (3072,), (1, 3, 32, 32)])))


@FUZZ
@given(batch=st.fixed_dictionaries({}, optional={b"data": _data_entry, b"labels": _values, "labels": _values,
                                                 b"filenames": _values}),
       protocol=st.sampled_from([2, 5]))
def test_fuzz_cifar_wrong_contents(cifar_root: Path, batch: dict, protocol: int) -> None:
    """Well-formed pickles holding the wrong things: shapes, dtypes, label types and ranges."""
    _must_be_clean(_load_test_batch, cifar_root, pickle.dumps(batch, protocol=protocol))


# ---------------------------------------------------------------- image folders


def _image_bytes(fmt: str, mode: str) -> bytes:
    size = (12, 9)
    im = Image.fromarray(np.random.default_rng(1).integers(0, 256, (9, 12, 3), dtype=np.uint8)).convert(mode)
    if mode == "I;16":
        im = Image.fromarray(np.arange(108, dtype=np.uint16).reshape(9, 12) * 600)
    buf = io.BytesIO()
    im.resize(size).save(buf, format=fmt)
    return buf.getvalue()


_IMAGES = [("PNG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("PNG", "L"), ("PNG", "I;16"), ("JPEG", "RGB"),
           ("BMP", "RGB"), ("WEBP", "RGB")]
_SUFFIX = {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "WEBP": ".webp"}


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("images")


def _decode(path: Path, data: bytes) -> None:
    """Load a one-class folder holding just this file, through the whole folder loader."""
    path.parent.mkdir(exist_ok=True)
    for old in path.parent.iterdir():
        old.unlink()
    path.write_bytes(data)
    ds = load_dataset("folder", path.parent.parent, image_size=16)
    assert ds.images.shape == (1, 3, 16, 16) and ds.images.dtype == torch.uint8


@FUZZ
@given(data=st.binary(max_size=2048), suffix=st.sampled_from(sorted(_SUFFIX.values())))
def test_fuzz_image_random_bytes(image_dir: Path, data: bytes, suffix: str) -> None:
    _must_be_clean(_decode, image_dir / "cls" / f"random{suffix}", data)


@settings(FUZZ, max_examples=120)
@given(case=st.sampled_from(_IMAGES).flatmap(
    lambda fm: st.tuples(st.just(_SUFFIX[fm[0]]), mutated(_image_bytes(*fm)))))
def test_fuzz_image_mutated_files(image_dir: Path, case: tuple[str, bytes]) -> None:
    suffix, data = case
    _must_be_clean(_decode, image_dir / "cls" / f"mutated{suffix}", data)


def test_fuzzed_image_errors_name_the_file(image_dir: Path) -> None:
    """The contract the fuzzers rely on, shown once: a broken file is named in the error."""
    path = image_dir / "broken.png"
    path.write_bytes(_image_bytes("PNG", "RGB")[:40])
    with pytest.raises(UserError, match="broken.png"):
        load_image(path, 16)


# ---------------------------------------------------------------- checkpoints


def _small_checkpoint() -> bytes:
    """A checkpoint with the real layout (nets, Adam states, RNG, config), but tiny nets."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    opt = torch.optim.Adam(net.parameters(), lr=2e-4, betas=(0.5, 0.999))
    net(torch.randn(5, 3)).sum().backward()
    opt.step()
    state = {"G": net.state_dict(), "D": net.state_dict(), "opt_G": opt.state_dict(), "opt_D": opt.state_dict(),
             "step": 5, "epoch": 0, "batch": 5, "rng": {"cpu": torch.get_rng_state()},
             "config": {"dataset": "shapes", "lr": 2e-4, "resume": None}, "class_names": ["a", "b"],
             "world_size": 1, "format_version": 1}
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


SMALL_CKPT = _small_checkpoint()


def _with_pickle(ckpt: bytes, new_pickle: bytes) -> bytes:
    """The checkpoint archive with its data.pkl replaced: reaches the unpickler past the zip layer."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(ckpt)) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, new_pickle if info.filename.endswith("data.pkl") else data)
    return out.getvalue()


def _data_pkl(ckpt: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(ckpt)) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))


@pytest.fixture(scope="module")
def ckpt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ckpt")


def _load(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    state = load_checkpoint(path)
    assert isinstance(state, dict) and "G" in state


def test_small_checkpoint_loads(ckpt_dir: Path) -> None:
    atomic_save(torch.load(io.BytesIO(SMALL_CKPT), weights_only=True), ckpt_dir / "good.pt")
    assert load_checkpoint(ckpt_dir / "good.pt")["step"] == 5


@FUZZ
@given(data=st.binary(max_size=4096))
def test_fuzz_checkpoint_random_bytes(ckpt_dir: Path, data: bytes) -> None:
    _must_be_clean(_load, ckpt_dir / "random.pt", data)


@settings(FUZZ, max_examples=100)
@given(data=mutated(SMALL_CKPT))
def test_fuzz_checkpoint_mutated_archive(ckpt_dir: Path, data: bytes) -> None:
    _must_be_clean(_load, ckpt_dir / "mutated.pt", data)


@settings(FUZZ, max_examples=100)
@given(pkl=mutated(_data_pkl(SMALL_CKPT)))
def test_fuzz_checkpoint_mutated_pickle(ckpt_dir: Path, pkl: bytes) -> None:
    _must_be_clean(_load, ckpt_dir / "mutated_pickle.pt", _with_pickle(SMALL_CKPT, pkl))
