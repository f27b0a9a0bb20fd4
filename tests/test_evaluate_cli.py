"""`acgan evaluate` and in-training evaluation, end to end with a stand-in detector (no Inception offline)."""

import json

import pytest
import torch
from data_fixtures import with_ema

from acgan.cli import main
from acgan.config import TrainConfig
from acgan.metrics.standin import save_standin_detector
from acgan.train import train


@pytest.fixture(scope="module")
def run_and_detector(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    run_dir = train(TrainConfig(dataset="shapes", batch_size=16, max_steps=2, outdir=str(root / "runs"),
                                num_workers=0))
    return run_dir, save_standin_detector(root / "standin.pt")


def test_evaluate_checkpoint_prints_and_writes_every_metric(run_and_detector, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("ACGAN_CACHE", str(tmp_path / "cache"))
    run_dir, detector = run_and_detector
    args = ["evaluate", "--checkpoint", str(run_dir / "checkpoints" / "last.pt"), "--detector", str(detector),
            "--metrics", "fid,is,kid,pr,ifid,msssim", "--num_samples", "200"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "fid200" in out and "is200_mean" in out and "200 images generated and scored in" in out
    written = run_dir / "metrics" / "step-00000002.json"
    results = json.loads(written.read_text())
    for key in ("fid", "is_mean", "kid_mean", "precision", "recall", "ifid_mean", "msssim_fake_mean"):
        assert key in results, key
    assert results["num_fake"] == 200 and results["fid"] > 0
    assert any((tmp_path / "cache").rglob("*.npz"))  # real statistics were cached
    assert main(args) == 0  # a second evaluation never overwrites the first
    assert (run_dir / "metrics" / "step-00000002-1.json").is_file() and written.is_file()


def test_evaluate_two_image_sets_is_near_zero_for_the_same_set(run_and_detector, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("ACGAN_CACHE", str(tmp_path / "cache"))
    _, detector = run_and_detector
    out = tmp_path / "m.json"
    assert main(["evaluate", "--real", "unused", "--real_dataset", "shapes", "--real_split", "train",
                 "--dataset", "shapes", "--detector", str(detector), "--out", str(out)]) == 0
    assert abs(json.loads(out.read_text())["fid"]) < 1e-6
    assert main(["evaluate", "--real", "unused", "--real_dataset", "shapes", "--real_split", "test",
                 "--dataset", "shapes", "--detector", str(detector), "--out", str(out)]) == 0
    assert json.loads((tmp_path / "m-1.json").read_text())["fid"] > 0  # test split differs from train


def test_missing_detector_is_one_clear_line(run_and_detector, capsys):
    run_dir, _ = run_and_detector
    code = main(["evaluate", "--checkpoint", str(run_dir / "checkpoints" / "last.pt"), "--detector",
                 "/nonexistent/inception.pt"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "/nonexistent/inception.pt" in err[0]


@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_a_detector_precision_the_detector_cannot_take_is_one_clear_line(run_and_detector, capsys, monkeypatch,
                                                                          precision):
    run_dir, detector = run_and_detector
    monkeypatch.setenv("ACGAN_DETECTOR_PRECISION", precision)  # bf16 needs the real Inception's eager copy
    code = main(["evaluate", "--checkpoint", str(run_dir / "checkpoints" / "last.pt"), "--detector", str(detector)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "ACGAN_DETECTOR_PRECISION" in err[0]


def test_msssim_alone_needs_no_detector(run_and_detector, tmp_path):
    run_dir, _ = run_and_detector
    out = tmp_path / "m.json"
    assert main(["evaluate", "--checkpoint", str(run_dir / "checkpoints" / "last.pt"), "--metrics", "msssim",
                 "--num_samples", "100", "--out", str(out)]) == 0
    assert 0 < json.loads(out.read_text())["msssim_fake_mean"] <= 1


def test_eval_every_logs_metrics_and_keeps_best_by_fid(run_and_detector, monkeypatch, tmp_path):
    monkeypatch.setenv("ACGAN_CACHE", str(tmp_path / "cache"))
    _, detector = run_and_detector
    run_dir = train(TrainConfig(dataset="shapes", batch_size=16, max_steps=4, log_every=2, eval_every=2,
                                eval_samples=60, detector=str(detector), outdir=str(tmp_path / "runs"),
                                num_workers=0))
    rows = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    fids = [r["fid60"] for r in rows if "fid60" in r]
    assert len(fids) == 2
    from acgan.checkpoint import load_checkpoint

    best = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    assert best["best_fid"] == min(fids) and best["step"] in (2, 4)


def test_measuring_a_run_never_changes_it(run_and_detector, monkeypatch, tmp_path):
    # Loading the detector and the classifier builds nets, whose initial weights came from the run's own RNG:
    # a run with --eval_every trained other weights than the same run without it, and a resumed one others again.
    from acgan.checkpoint import load_checkpoint
    from acgan.data import SHAPE_NAMES
    from acgan.metrics.classifier import ClassifierNet, save_classifier

    monkeypatch.setenv("ACGAN_CACHE", str(tmp_path / "cache"))
    _, detector = run_and_detector
    clf = save_classifier(ClassifierNet(len(SHAPE_NAMES), width=2), tmp_path / "clf.pt", class_names=SHAPE_NAMES,
                          dataset_key="given", image_size=32, test_accuracy=0.5)
    small = dict(dataset="shapes", batch_size=16, log_every=2, num_workers=0, precision="fp32")  # no probe
    measured = dict(eval_every=2, eval_samples=40, eval_metrics="fid,kid,cacc,msssim", detector=str(detector),
                    classifier=str(clf))

    def weights(run_dir):
        state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        return state["step"], state["G"], state["D"]

    plain = weights(train(TrainConfig(**small, max_steps=6, outdir=str(tmp_path / "plain"))))
    straight = train(TrainConfig(**small, **measured, max_steps=6, outdir=str(tmp_path / "measured")))
    assert any("fid40" in line for line in (straight / "stats.jsonl").read_text().splitlines())
    train(TrainConfig(**small, **measured, max_steps=3, outdir=str(tmp_path / "resumed")))
    resumed = train(TrainConfig(**small, **measured, max_steps=6, outdir=str(tmp_path / "resumed"), resume="auto"),
                    explicit=frozenset({"max_steps", "resume"}))
    for run in (weights(straight), weights(resumed)):
        assert run[0] == plain[0] == 6
        for ours, theirs in zip(run[1:], plain[1:], strict=True):
            assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_evaluate_checkpoint_scores_cacc_with_a_given_classifier(run_and_detector, tmp_path):
    from acgan.data import SHAPE_NAMES
    from acgan.metrics.classifier import ClassifierNet, save_classifier

    run_dir, _ = run_and_detector
    clf = save_classifier(ClassifierNet(len(SHAPE_NAMES), width=2), tmp_path / "clf.pt", class_names=SHAPE_NAMES,
                          dataset_key="given", image_size=32, test_accuracy=0.5)
    out = tmp_path / "m.json"
    assert main(["evaluate", "--checkpoint", str(run_dir / "checkpoints" / "last.pt"), "--metrics", "cacc",
                 "--classifier", str(clf), "--num_samples", "100", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert 0 <= results["cacc"] <= 1 and results["cacc_real_test"] == 0.5 and results["num_fake"] == 100
    assert sum(1 for k in results if k.startswith("cacc_class_")) == len(SHAPE_NAMES)


def test_a_full_disk_at_the_json_loses_no_numbers_and_says_so_in_one_line(run_and_detector, capsys, monkeypatch,
                                                                          tmp_path):
    import errno

    monkeypatch.setenv("ACGAN_CACHE", str(tmp_path / "cache"))
    _, detector = run_and_detector

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("acgan.metrics.evaluate.tempfile.mkstemp", full_disk)
    out = tmp_path / "m.json"
    code = main(["evaluate", "--real", "unused", "--real_dataset", "shapes", "--real_split", "test",
                 "--dataset", "shapes", "--detector", str(detector), "--out", str(out)])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "error" in line]  # progress bars share stderr
    assert code == 1 and not out.exists()
    assert any(line.startswith("fid") for line in captured.out.splitlines())  # the numbers were printed first
    assert len(errors) == 1 and errors[0].startswith("acgan evaluate: error: could not write")
    assert str(out) in errors[0] and "No space left on device" in errors[0] and "needs about" in errors[0]


def test_a_prepared_directory_scores_as_the_data_it_was_prepared_from(run_and_detector, monkeypatch, tmp_path):
    from acgan.data.prepare import decoded_source, prepare

    monkeypatch.setenv("ACGAN_CACHE", str(tmp_path / "cache"))
    _, detector = run_and_detector
    prepared = tmp_path / "prepared"
    prepare(decoded_source("shapes", None, 32, split="test"), prepared, show_progress=False)
    out = tmp_path / "m.json"
    # --real_split is CIFAR's and shapes' business: the prepared directory is the test split it was made from
    assert main(["evaluate", "--real", str(prepared), "--real_dataset", "prepared", "--dataset", "shapes",
                 "--split", "test", "--detector", str(detector), "--metrics", "fid", "--out", str(out)]) == 0
    assert abs(json.loads(out.read_text())["fid"]) < 1e-6


def test_evaluate_scores_the_raw_g_on_request_and_the_json_says_which(run_and_detector, capsys, tmp_path):
    run_dir, detector = run_and_detector
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    both = with_ema(run_dir / "checkpoints" / "last.pt", tmp_path / "run" / "checkpoints" / "last.pt")
    base = ["evaluate", "--checkpoint", str(both), "--metrics", "fid", "--num_samples", "100", "--detector",
            str(detector)]
    assert main([*base, "--out", str(tmp_path / "ema.json")]) == 0
    assert "drawn by G_ema" in capsys.readouterr().out
    assert main([*base, "--weights", "raw"]) == 0  # default name: beside the EMA's, never over it
    ema = json.loads((tmp_path / "ema.json").read_text())
    raw = json.loads((tmp_path / "run" / "metrics" / "step-00000002-raw.json").read_text())
    assert (ema["generator"], raw["generator"]) == ("G_ema", "G") and ema["fid"] != raw["fid"]
