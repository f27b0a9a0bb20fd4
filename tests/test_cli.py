"""The command line: complete help, and one-line errors with a non-zero exit for user mistakes."""

import subprocess
import sys

import pytest


def _acgan(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "acgan", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def _one_line_error(result):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    return len(lines) == 1 and "Traceback" not in result.stderr and "error" in lines[0]


def test_train_help_lists_the_original_flags_and_groups():
    result = _acgan("train", "--help")
    assert result.returncode == 0
    for flag in ("--root_dir", "--num_workers", "--batch_size", "--nz", "--num_epochs", "--lr", "--beta1",
                 "--outdir", "--dataset", "--seed", "--device", "--resume", "--sample_every", "--ckpt_every",
                 "--max_steps", "--download"):
        assert flag in result.stdout, flag
    assert "(default: 100)" in result.stdout and "(default: 0.0002)" in result.stdout
    assert "data:" in result.stdout and "run control:" in result.stdout


def test_sample_help():
    result = _acgan("sample", "--help")
    assert result.returncode == 0 and "--checkpoint" in result.stdout and "--class" in result.stdout


@pytest.mark.parametrize("args", [
    ["train", "--no_such_flag"],
    ["train", "--batch_size", "ten"],
    ["train", "--dataset", "mnist"],
    ["frobnicate"],
])
def test_bad_flags_exit_2_with_one_line(args):
    result = _acgan(*args)
    assert result.returncode == 2 and _one_line_error(result), result.stderr


@pytest.mark.parametrize("args, needle", [
    (["train", "--batch_size", "-5"], "--batch_size must be positive"),
    (["train", "--lr", "0"], "--lr must be positive"),
    (["train", "--g_cls_weight", "-1"], "--g_cls_weight must be positive"),
    (["train", "--dataset", "shapes", "--arch", "sndcgan", "--recipe", "tuned"], "--recipe tuned is for"),
    (["train", "--dataset", "cifar10", "--root_dir", "/nonexistent/cifar"], "/nonexistent/cifar"),
    (["train", "--dataset", "folder", "--root_dir", "/nonexistent/images"], "/nonexistent/images"),
    (["sample", "--checkpoint", "/nonexistent/last.pt"], "not found"),
])
def test_user_mistakes_exit_1_with_one_line(args, needle, tmp_path):
    result = _acgan(*args, "--outdir", str(tmp_path)) if args[0] == "train" else _acgan(*args)
    assert result.returncode == 1 and _one_line_error(result), result.stderr
    assert needle in result.stderr


def test_unknown_class_is_one_line(tmp_path):
    run = _acgan("train", "--dataset", "shapes", "--max_steps", "1", "--batch_size", "8", "--outdir", str(tmp_path))
    assert run.returncode == 0, run.stderr
    result = _acgan("sample", "--checkpoint", str(tmp_path / "00000-shapes" / "checkpoints" / "last.pt"),
                    "--class", "dragon")
    assert result.returncode == 1 and _one_line_error(result) and "dragon" in result.stderr
