"""End-to-end training runs on the shapes data: what a run writes, and exact resume."""

import json

import pytest
import torch

from acgan.checkpoint import load_checkpoint
from acgan.config import TrainConfig, config_from_dict
from acgan.errors import UserError
from acgan.train import train

SMALL = dict(dataset="shapes", batch_size=16, num_workers=0, log_every=2, sample_every=4, ckpt_every=4)


def _states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_run_writes_everything_a_user_expects(tmp_path):
    run_dir = train(TrainConfig(**SMALL, outdir=str(tmp_path), max_steps=6))
    assert run_dir.name == "00000-shapes"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["batch_size"] == 16 and config["lr"] == 0.0002 and config["beta1"] == 0.5
    assert config["class_names"][0] == "circle" and config["global_batch_size"] == 16
    rows = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]
    for key in ("loss_D", "loss_G", "D_x", "D_G_z1", "D_G_z2", "acc_real", "acc_fake", "images_per_s"):
        assert all(key in r for r in rows), key
    assert all(0 <= r["D_x"] <= 1 and 0 <= r["acc_fake"] <= 1 for r in rows)
    assert {p.name for p in (run_dir / "samples").iterdir()} >= {"reals.png", "step-00000004.png", "step-00000006.png"}
    assert {p.name for p in (run_dir / "plots").iterdir()} == {"losses.png", "class_accuracy.png", "d_outputs.png"}
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    assert any((run_dir / "tensorboard").iterdir())
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == 6 and {"G", "D", "opt_G", "opt_D", "rng", "epoch", "batch"} <= state.keys()


def test_second_run_gets_a_new_directory(tmp_path):
    first = train(TrainConfig(**SMALL, outdir=str(tmp_path), max_steps=1))
    second = train(TrainConfig(**SMALL, outdir=str(tmp_path), max_steps=1))
    assert (first.name, second.name) == ("00000-shapes", "00001-shapes")
    assert (first / "checkpoints" / "last.pt").is_file()  # the first run is untouched


def test_resume_matches_an_uninterrupted_run_bit_for_bit(tmp_path):
    straight = train(TrainConfig(**SMALL, outdir=str(tmp_path / "a"), max_steps=8))
    train(TrainConfig(**SMALL, outdir=str(tmp_path / "b"), max_steps=5))
    resumed = train(TrainConfig(**SMALL, outdir=str(tmp_path / "b"), max_steps=8, resume="auto"),
                    explicit=frozenset({"max_steps", "resume"}))
    assert resumed == tmp_path / "b" / "00000-shapes"  # continued in place, no new run directory
    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    b = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert a["step"] == b["step"] == 8
    assert _states_equal(a["G"], b["G"]) and _states_equal(a["D"], b["D"])
    assert torch.equal(a["opt_G"]["state"][0]["exp_avg"], b["opt_G"]["state"][0]["exp_avg"])
    rows = [json.loads(line)["step"] for line in (resumed / "stats.jsonl").read_text().splitlines()]
    assert rows == sorted(set(rows))  # no duplicated steps after the resume


def test_resume_keeps_the_checkpoint_settings_that_define_training(tmp_path):
    run_dir = train(TrainConfig(**SMALL, outdir=str(tmp_path), max_steps=2))
    train(TrainConfig(**{**SMALL, "lr": 0.1}, outdir=str(tmp_path), max_steps=3, resume=str(run_dir)),
          explicit=frozenset({"lr", "max_steps", "resume"}))
    config = json.loads((run_dir / "config.json").read_text())
    assert config["lr"] == 0.0002 and config["max_steps"] == 3


def test_resume_of_a_missing_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        train(TrainConfig(**SMALL, outdir=str(tmp_path), resume=str(tmp_path / "nope.pt")))


def test_real_grid_keeps_one_row_per_class_when_a_class_is_short():
    from acgan.data import ImageDataset
    from acgan.runlog import real_grid as _real_grid

    images = torch.arange(5, dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 3, 32, 32).contiguous()
    data = ImageDataset(images, torch.tensor([0, 0, 0, 1, 1]), ("a", "b"))
    grid = _real_grid(data, per_class=3)
    assert grid.shape == (6, 3, 32, 32)
    assert grid[:, 0, 0, 0].tolist() == [0, 1, 2, 3, 4, 255]  # class b's row is padded, not shifted


RECIPE = dict(arch="sndcgan", cls_loss="d2dce", diffaug="color,translation,cutout", n_dis=2, ema_warmup=2)


def _straight_and_resumed(tmp_path, recipe: dict, steps: int):
    """The last checkpoints of a run of `steps` steps and of one stopped halfway and resumed, and the resumed run."""
    straight = train(TrainConfig(**SMALL, **recipe, outdir=str(tmp_path / "a"), max_steps=steps))
    train(TrainConfig(**SMALL, **recipe, outdir=str(tmp_path / "b"), max_steps=steps // 2))
    resumed = train(TrainConfig(**SMALL, outdir=str(tmp_path / "b"), max_steps=steps, resume="auto"),
                    explicit=frozenset({"max_steps", "resume"}))
    a = load_checkpoint(straight / "checkpoints" / "last.pt")
    return a, load_checkpoint(resumed / "checkpoints" / "last.pt"), resumed


def test_every_recipe_option_resumes_bit_for_bit(tmp_path):
    # sndcgan + hinge + D2D-CE + DiffAugment + n_dis 2 + EMA: all state (EMA, SN vectors, proxies) is saved
    a, b, resumed = _straight_and_resumed(tmp_path, RECIPE, 8)
    assert _states_equal(a["G"], b["G"]) and _states_equal(a["D"], b["D"])
    assert _states_equal(a["G_ema"], b["G_ema"]) and not _states_equal(a["G_ema"], a["G"])
    config = json.loads((resumed / "config.json").read_text())
    assert (config["arch"], config["loss"], config["g_cond"], config["ema_decay"]) == ("sndcgan", "hinge", "cbn", 0.999)
    rows = [json.loads(line) for line in (resumed / "stats.jsonl").read_text().splitlines()]
    assert all(0 <= r["acc_real"] <= 1 and r["loss_G"] == r["loss_G"] for r in rows)  # G stats on n_dis steps


def test_a_twin_class_loss_trains_and_resumes_bit_for_bit(tmp_path):
    # adc: D's class head has 2K outputs; the paper's nets with the tuned recipe, as the variety runs train them
    a, b, resumed = _straight_and_resumed(tmp_path, dict(recipe="tuned", cls_loss="adc", ema_warmup=2), 6)
    assert _states_equal(a["G"], b["G"]) and _states_equal(a["D"], b["D"])
    assert a["D"]["fc_class.weight"].shape[0] == 2 * len(a["class_names"])
    assert json.loads((resumed / "config.json").read_text())["cls_loss"] == "adc"


def test_n_dis_updates_G_once_per_n_dis_steps(tmp_path):
    run_dir = train(TrainConfig(**{**SMALL, "log_every": 4}, n_dis=4, outdir=str(tmp_path), max_steps=4))
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["opt_D"]["state"][0]["step"].item() == 4 and state["opt_G"]["state"][0]["step"].item() == 1


def test_recipe_flags_are_validated():
    with pytest.raises(UserError, match="--log_every"):
        TrainConfig(log_every=5, n_dis=2)
    with pytest.raises(UserError, match="--diffaug"):
        TrainConfig(diffaug="color,rotate")
    with pytest.raises(UserError, match="--g_cond cbn"):
        TrainConfig(arch="paper", g_cond="cbn").resolved()
    with pytest.raises(UserError, match="--d_dropout"):
        TrainConfig(d_dropout=1.0)
    with pytest.raises(UserError, match="--d_dropout applies to"):
        TrainConfig(arch="sndcgan", d_dropout=0.3).resolved()


def test_unset_recipe_choices_follow_the_arch_and_given_ones_win():
    paper, sndcgan = TrainConfig(arch="paper").resolved(), TrainConfig(arch="sndcgan").resolved()
    assert (paper.loss, paper.cls_loss, paper.ema_decay, paper.d_dropout) == ("bce", "ce", 0.0, 0.5)  # the paper's
    assert (sndcgan.loss, sndcgan.cls_loss, sndcgan.g_cond, sndcgan.d_dropout) == ("hinge", "ce_real", "cbn", 0.0)
    assert TrainConfig(arch="paper", d_dropout=0.0).resolved().d_dropout == 0.0
    given = TrainConfig(arch="sndcgan", cls_loss="ce", loss="bce").resolved()
    assert (given.loss, given.cls_loss) == ("bce", "ce")
    assert config_from_dict({"cls_loss": "ce"}).resolved().cls_loss == "ce"  # an older config keeps its recipe


def test_tuned_recipe_fills_only_unset_choices_and_scales_with_lr():
    tuned = TrainConfig(recipe="tuned").resolved()
    assert (tuned.loss, tuned.cls_loss, tuned.d_dropout, tuned.ema_decay) == ("bce", "ce_real", 0.0, 0.999)
    assert set(tuned.diffaug.split(",")) == {"color", "translation", "cutout"}
    assert (tuned.lr_d, tuned.lr_g) == pytest.approx((5 * tuned.lr, 2 * tuned.lr))  # 1e-3 / 4e-4 at --lr 2e-4
    slower = TrainConfig(recipe="tuned", lr=1e-4).resolved()
    assert (slower.lr_d, slower.lr_g) == pytest.approx((5e-4, 2e-4))  # --lr keeps its meaning
    given = TrainConfig(recipe="tuned", lr_g=3e-4, diffaug="none", cls_loss="ce", ema_decay=0.0).resolved()
    assert (given.lr_g, given.diffaug, given.cls_loss, given.ema_decay) == (3e-4, "none", "ce", 0.0)
    assert given.lr_d == pytest.approx(5 * given.lr)
    paper = TrainConfig().resolved()  # the default recipe stays the paper's and the original CLI's
    assert (paper.recipe, paper.diffaug, paper.lr_d, paper.lr_g) == ("default", "none", paper.lr, paper.lr)
    assert TrainConfig(arch="imagenet", recipe="tuned").resolved().d_dropout == 0.0
    with pytest.raises(UserError, match="--recipe tuned"):
        TrainConfig(arch="resnet", recipe="tuned").resolved()
    with pytest.raises(UserError, match="--recipe"):
        TrainConfig(recipe="fast")


def test_a_tuned_run_records_and_resumes_its_resolved_recipe(tmp_path):
    train(TrainConfig(**SMALL, recipe="tuned", outdir=str(tmp_path), max_steps=4))
    resumed = train(TrainConfig(**SMALL, outdir=str(tmp_path), max_steps=6, resume="auto"),
                    explicit=frozenset({"max_steps", "resume"}))
    config = json.loads((resumed / "config.json").read_text())
    assert (config["recipe"], config["cls_loss"], config["d_dropout"], config["ema_decay"]) == \
        ("tuned", "ce_real", 0.0, 0.999)
    assert config["lr_d"] == pytest.approx(5 * config["lr"])
    state = load_checkpoint(resumed / "checkpoints" / "last.pt")
    assert state["step"] == 6 and state["G_ema"] is not None
