"""The statistics cache and compute_metrics end to end with the stand-in detector."""

import json
import math

import numpy as np
import pytest
import torch

from acgan.errors import UserError
from acgan.metrics import (
    METRICS,
    Detector,
    MetricSettings,
    cached,
    compute_metrics,
    count_tag,
    format_table,
    load_detector,
    parse_metrics,
    save_standin_detector,
    with_sample_count,
    write_json,
)
from acgan.metrics.cache import stats_path
from acgan.metrics.evaluate import collect_fakes

NUM_CLASSES = 4


# ---------------------------------------------------------------- cache


def test_cached_statistics_are_reused_and_invalidated_by_a_new_dataset(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"mu": np.arange(3.0) + len(calls), "sigma": np.eye(3)}

    parts = {"dataset": "sha-a", "detector": "det", "num_images": 10, "statistic": "fid"}
    first = cached(parts, compute, tmp_path)
    second = cached(dict(reversed(parts.items())), compute, tmp_path)  # key order must not matter
    assert len(calls) == 1
    np.testing.assert_array_equal(first["mu"], second["mu"])
    assert stats_path(parts, tmp_path).is_file()
    third = cached({**parts, "dataset": "sha-b"}, compute, tmp_path)
    assert len(calls) == 2 and third["mu"][0] == 2.0


def test_no_cache_dir_always_computes(tmp_path):
    calls = []
    compute = lambda: calls.append(1) or {"x": np.zeros(1)}  # noqa: E731
    cached({"a": 1}, compute, None)
    cached({"a": 1}, compute, None)
    assert len(calls) == 2


def test_a_torn_cache_file_is_recomputed(tmp_path):
    parts = {"dataset": "d"}
    path = stats_path(parts, tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 torn")
    assert cached(parts, lambda: {"x": np.ones(2)}, tmp_path)["x"].tolist() == [1.0, 1.0]
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left behind


def test_an_unwritable_cache_warns_but_still_returns_the_statistics(tmp_path):
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    with pytest.warns(RuntimeWarning, match="could not cache"):
        assert cached({"a": 1}, lambda: {"x": np.ones(1)}, blocker)["x"].tolist() == [1.0]


# ---------------------------------------------------------------- compute_metrics


class CountingDetector(Detector):
    """Counts the images the detector runs on, to tell cached real statistics from recomputed ones."""

    seen = 0

    def features(self, images, progress=None, partial=None):
        self.seen += images.shape[0]
        return super().features(images, progress, partial)


@pytest.fixture(scope="module")
def detector_path(tmp_path_factory):
    return save_standin_detector(tmp_path_factory.mktemp("det") / "standin.pt", feature_dim=8, num_classes=5)


@pytest.fixture
def detector(detector_path):
    plain = load_detector(detector_path, batch_size=64)
    return CountingDetector(plain.module, plain.name, batch_size=64)


def _labelled_images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    small = torch.rand(n, 3, 8, 8, generator=gen)
    images = torch.nn.functional.interpolate(small, size=(32, 32), mode="bilinear", align_corners=False)
    return (images * 255).round().to(torch.uint8), torch.arange(n) % NUM_CLASSES


def _run(metrics, fakes, reals, detector, cache_dir):
    settings = MetricSettings(kid_subset_size=100, kid_subsets=10, msssim_pairs=20)
    return compute_metrics(metrics, fake_images=fakes, real_images=reals[0], real_labels=reals[1],
                           num_classes=NUM_CLASSES, detector=detector, real_key="real-v1", cache_dir=cache_dir,
                           batch_size=50, settings=settings)


def test_a_set_against_itself_scores_perfectly_also_from_the_cache(tmp_path, detector):
    reals = _labelled_images(240, seed=0)
    first = _run(["fid", "kid", "pr", "ifid", "is"], reals, reals, detector, tmp_path)
    assert detector.seen == 2 * 240  # generated and real each once
    second = _run(["fid", "kid", "pr", "ifid", "is"], reals, reals, detector, tmp_path)
    assert detector.seen == 3 * 240  # real statistics came from the cache
    for r in (first, second):
        # tanh features in 8 dimensions: total variance is below 8, so 1e-6 is relative to it.
        assert abs(r["fid"]) < 1e-6 and abs(r["ifid_mean"]) < 1e-6
        assert r["precision"] == r["recall"] == 1.0
        assert 1.0 <= r["is_mean"] <= 5.0
        assert [k for k in r if k.startswith("ifid_class_")] == [f"ifid_class_{c}" for c in range(NUM_CLASSES)]
        assert r["num_fake"] == r["num_real"] == 240
    assert first == second


def test_a_streamed_source_matches_a_ready_tuple(tmp_path, detector):
    reals, fakes = _labelled_images(200, seed=1), _labelled_images(130, seed=2)

    def stream(batch_size):
        # Uneven batches, unrelated to the requested size: only the concatenation matters.
        for start in range(0, 130, 37):
            yield fakes[0][start:start + 37], fakes[1][start:start + 37]

    metrics = ["fid", "is", "kid", "pr", "ifid", "msssim"]
    from_tuple = _run(metrics, fakes, reals, detector, tmp_path)
    from_stream = _run(metrics, stream, reals, detector, tmp_path)
    assert from_tuple.keys() == from_stream.keys()
    for key, value in from_tuple.items():
        assert from_stream[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key


def test_shifted_fakes_score_worse(tmp_path, detector):
    reals = _labelled_images(200, seed=3)
    darker = ((reals[0].int() * 0.6).round().to(torch.uint8), reals[1])
    same = _run(["fid", "kid"], reals, reals, detector, tmp_path)
    worse = _run(["fid", "kid"], darker, reals, detector, tmp_path)
    assert abs(same["fid"]) < 1e-6 < worse["fid"]
    assert worse["kid_mean"] > same["kid_mean"]


def test_msssim_needs_no_detector_and_scores_both_sets_alike(tmp_path):
    reals = _labelled_images(80, seed=4)
    r = _run(["msssim"], reals, reals, None, tmp_path)
    # The pool holds all 20 images of each class in order, so the same pairs are drawn from both sets.
    assert r["msssim_fake_mean"] == r["msssim_real_mean"]
    for c in range(NUM_CLASSES):
        assert 0.0 < r[f"msssim_fake_class_{c}"] == r[f"msssim_real_class_{c}"] < 1.0
    assert not (tmp_path / "stats").exists()  # MS-SSIM caches nothing


def test_the_msssim_pool_keeps_the_first_images_of_each_class():
    images, labels = _labelled_images(50, seed=6)
    fakes = collect_fakes((images, labels), None, want_features=False, want_probs=False,
                          pool_per_class=6, batch_size=8)
    assert sorted(fakes.pools) == list(range(NUM_CLASSES))
    for c in range(NUM_CLASSES):
        torch.testing.assert_close(torch.cat(fakes.pools[c]), images[labels == c][:6])


def test_metrics_that_need_a_detector_refuse_to_run_without_one(tmp_path):
    reals = _labelled_images(20, seed=5)
    with pytest.raises(UserError, match="fid"):
        _run(["msssim", "fid"], reals, reals, None, tmp_path)


def test_unknown_metric_names_list_the_valid_ones():
    with pytest.raises(UserError) as err:
        parse_metrics("fid,bogus")
    assert "bogus" in str(err.value) and all(name in str(err.value) for name in METRICS)
    assert parse_metrics("FID, is,fid") == ["fid", "is"]


# ---------------------------------------------------------------- reporting


def test_count_tags_and_tagged_names():
    assert [count_tag(n) for n in (10000, 50000, 2500, 999)] == ["10k", "50k", "2500", "999"]
    tagged = with_sample_count({"fid": 1.0, "is_mean": 2.0, "msssim_fake_mean": 0.1, "num_fake": 10000.0})
    assert list(tagged) == ["fid10k", "is10k_mean", "msssim_fake_mean", "num_fake"]


def test_format_table_lines_up_names_and_values():
    lines = format_table({"fid": 12.3456789, "kid_mean": 0.000123, "num_fake": 5000.0}).splitlines()
    assert [line.split() for line in lines] == [["fid5k", "12.3457"], ["kid5k_mean", "0.000123"], ["num_fake", "5000"]]
    assert len({line.index(line.split()[1]) for line in lines}) == 1


def test_write_json_round_trips_and_turns_nan_into_null(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    write_json({"fid": 1.5, "ifid_mean": math.nan}, path)
    assert json.loads(path.read_text()) == {"fid": 1.5, "ifid_mean": None}
    assert [p.name for p in path.parent.iterdir()] == ["metrics.json"]
