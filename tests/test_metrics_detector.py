"""Finding, downloading and verifying the detector file; running a TorchScript detector in batches."""

import hashlib
import os
from pathlib import Path

import pytest
import torch

from acgan.errors import UserError
from acgan.metrics import DETECTOR_SHA256, load_detector, resolve_detector_path, save_standin_detector
from acgan.metrics.cache import default_cache_dir
from acgan.metrics.detector import DETECTOR_FILENAME


@pytest.fixture
def payload(tmp_path):
    """A small stand-in for the detector download, served from a file:// URL."""
    src = tmp_path / "served" / "detector-file.pt"
    src.parent.mkdir()
    src.write_bytes(os.urandom(3000) * 3)
    return src, hashlib.sha256(src.read_bytes()).hexdigest()


@pytest.fixture
def no_env_detector(monkeypatch):
    monkeypatch.delenv("ACGAN_DETECTOR", raising=False)


def _images(n: int, seed: int = 0, channels: int = 3) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, 32, 32), dtype=torch.uint8, generator=gen)


# ---------------------------------------------------------------- resolving and downloading


def test_explicit_path_wins_and_must_exist(tmp_path, no_env_detector):
    f = tmp_path / "mine.pt"
    f.write_bytes(b"x")
    assert resolve_detector_path(f, cache_dir=tmp_path / "cache", url="file:///nonexistent") == f
    with pytest.raises(UserError, match="not found"):
        resolve_detector_path(tmp_path / "missing.pt", cache_dir=tmp_path / "cache")


def test_environment_variable_names_the_detector(tmp_path, monkeypatch):
    f = tmp_path / "env.pt"
    f.write_bytes(b"x")
    monkeypatch.setenv("ACGAN_DETECTOR", str(f))
    assert resolve_detector_path(None, cache_dir=tmp_path / "cache", url="file:///nonexistent") == f


def test_download_with_the_right_sha256_lands_in_the_cache(tmp_path, payload, no_env_detector):
    src, sha = payload
    cache = tmp_path / "cache"
    got = resolve_detector_path(None, cache_dir=cache, url=src.as_uri(), sha256=sha)
    assert got == cache / src.name and got.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == [src.name]  # no temp file left behind
    # Once cached, nothing is fetched again: an unreachable URL still resolves.
    unreachable = (tmp_path / "elsewhere" / src.name).as_uri()
    assert resolve_detector_path(None, cache_dir=cache, url=unreachable, sha256=sha) == got


def test_download_with_a_wrong_sha256_fails_and_leaves_nothing(tmp_path, payload, no_env_detector):
    src, sha = payload
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="sha256"):
        resolve_detector_path(None, cache_dir=cache, url=src.as_uri(), sha256="0" * 64)
    assert list(cache.iterdir()) == []


def test_unreachable_download_explains_how_to_proceed(tmp_path, no_env_detector):
    cache = tmp_path / "cache"
    url = (tmp_path / "nowhere" / DETECTOR_FILENAME).as_uri()
    with pytest.raises(UserError) as err:
        resolve_detector_path(None, cache_dir=cache, url=url, sha256=DETECTOR_SHA256)
    message = str(err.value)
    assert "download failed" in message and "--detector PATH" in message and str(cache) in message
    assert "\n" not in message
    assert list(cache.iterdir()) == []


def test_a_corrupt_cached_file_is_reported(tmp_path, payload, no_env_detector):
    src, sha = payload
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / src.name).write_bytes(b"truncated")
    with pytest.raises(UserError, match="sha256"):
        resolve_detector_path(None, cache_dir=cache, url=src.as_uri(), sha256=sha)


def test_default_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ACGAN_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ACGAN_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "acgan"


# ---------------------------------------------------------------- running a detector


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    path = save_standin_detector(tmp_path_factory.mktemp("det") / "standin.pt", feature_dim=16, num_classes=10)
    return load_detector(path, batch_size=7)


def test_standin_detector_shapes_and_name(standin):
    x = _images(20)
    feats, probs = standin.features(x), standin.probabilities(x)
    assert feats.shape == (20, 16) and feats.dtype == torch.float32
    assert probs.shape == (20, 10)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(20, dtype=probs.dtype))
    assert standin.name.startswith("standin-") and len(standin.name) > len("standin-")


def test_batching_does_not_change_results(standin):
    x = _images(20, seed=1)
    whole = standin.module(x, return_features=True)
    torch.testing.assert_close(standin.features(x), whole)  # batch_size 7 splits 20 as 7 + 7 + 6


def test_one_pass_probabilities_equal_the_module_output(standin):
    x = _images(12, seed=2)
    feats, probs = standin.features_and_probabilities(x)
    torch.testing.assert_close(feats, standin.features(x))
    torch.testing.assert_close(probs, standin.probabilities(x), rtol=1e-6, atol=1e-7)


def test_grey_images_are_seen_as_three_equal_channels(standin):
    grey = _images(5, seed=3, channels=1)
    torch.testing.assert_close(standin.features(grey), standin.features(grey.expand(-1, 3, -1, -1)))


def test_float_images_are_refused(standin):
    with pytest.raises(ValueError, match="uint8"):
        standin.features(torch.zeros(2, 3, 32, 32))


def test_a_non_torchscript_file_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(UserError, match="TorchScript"):
        load_detector(bad)


def _real_detector_path() -> Path | None:
    for candidate in (os.environ.get("ACGAN_DETECTOR"), default_cache_dir() / DETECTOR_FILENAME):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


@pytest.mark.skipif(_real_detector_path() is None, reason="inception-2015-12-05.pt not available offline")
def test_real_inception_detector():
    det = load_detector(_real_detector_path(), batch_size=4)
    x = _images(4, seed=4)
    feats, probs = det.features_and_probabilities(x)
    assert feats.shape == (4, 2048) and probs.shape == (4, 1008)
    torch.testing.assert_close(probs, det.probabilities(x), rtol=1e-4, atol=1e-6)
