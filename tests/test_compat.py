"""Checkpoints written by earlier versions of acgan keep resuming, and resume to the same weights."""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from acgan.checkpoint import load_checkpoint
from acgan.config import TrainConfig
from acgan.train import train

ROOT = Path(__file__).resolve().parents[1]
BEFORE_SHAPE_CHANGE = "a66dbab"  # main before the objective, the step and the CLI were reshaped (issue 20)
SETTINGS = dict(dataset="shapes", batch_size=8, num_workers=0, recipe="tuned", log_every=2, sample_every=100,
                ckpt_every=2, keep_ckpts=5, precision="fp32")

_OLD_RUN = """
import sys, torch
sys.path.insert(0, sys.argv[1])
torch.set_num_threads(int(sys.argv[3]))
import acgan
assert acgan.__file__.startswith(sys.argv[1]), acgan.__file__
from acgan.config import TrainConfig
from acgan.train import train
train(TrainConfig(**{settings}, max_steps=4, outdir=sys.argv[2]))
"""


def _old_source(commit: str, dest: Path) -> Path:
    """Unpack src/ of an earlier commit (skips where the clone lacks it, e.g. a shallow one)."""
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "src"], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("git is not available")
    if archive.returncode != 0:
        pytest.skip(f"commit {commit} is not in this clone")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "src"


def test_a_checkpoint_from_before_the_shape_change_resumes_to_the_same_weights(tmp_path):
    src = _old_source(BEFORE_SHAPE_CHANGE, tmp_path / "old")
    old_out = tmp_path / "old_runs"
    code = _OLD_RUN.format(settings=repr(SETTINGS))
    done = subprocess.run([sys.executable, "-c", code, str(src), str(old_out), str(torch.get_num_threads())],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    # today's code takes a copy of the old run at its step-2 checkpoint and trains the two steps the old code did
    copy = shutil.copytree(old_out, tmp_path / "copy") / "00000-shapes"
    (copy / "checkpoints" / "ckpt-00000004.pt").unlink()
    (copy / "checkpoints" / "last.pt").unlink()
    run_dir = train(TrainConfig(**SETTINGS, max_steps=4, resume=str(copy / "checkpoints" / "ckpt-00000002.pt")))
    assert run_dir == copy  # a resumed run goes on in its own directory
    old = load_checkpoint(old_out / "00000-shapes" / "checkpoints" / "ckpt-00000004.pt")
    new = load_checkpoint(copy / "checkpoints" / "last.pt")
    assert new["step"] == old["step"] == 4
    for net in ("G", "D", "G_ema"):
        for k in old[net]:
            if _absorbed_by_batchnorm(k, old[net]):
                continue
            # not bitwise: G's 1x1 -> 4x4 layer became a matmul, which rounds differently. A lost optimizer or
            # RNG state moves weights by about lr = 2e-4 in two steps, far beyond this tolerance
            torch.testing.assert_close(new[net][k], old[net][k], rtol=0, atol=1e-6, msg=f"{net} {k}")


def _absorbed_by_batchnorm(key: str, state: dict[str, torch.Tensor]) -> bool:
    """A conv bias that a BatchNorm follows, or that BatchNorm's running mean.

    The BatchNorm subtracts the bias again, so its true gradient is zero and Adam turns the rounding noise in its
    gradient into steps of full size: those values differ between any two kernels and change no output.
    """
    name, _, leaf = key.rpartition(".")
    if leaf == "running_mean":
        return True
    prefix, _, index = name.rpartition(".")
    return leaf == "bias" and index.isdigit() and f"{prefix}.{int(index) + 1}.running_mean" in state
