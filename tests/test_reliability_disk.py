"""A full disk or a read-only folder: one clear line, training goes on where it can, nothing on disk is lost.

ENOSPC and EACCES are injected at the write calls; where the suite runs as root, one run also meets a real,
small tmpfs. Every test checks the line, the exit status and that every checkpoint left on disk loads.
"""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
from test_distributed import TRAIN_ARGS, _torchrun

import acgan.runlog
import acgan.train
from acgan.checkpoint import load_checkpoint
from acgan.cli import main

CLI_SMALL = ["train", "--dataset", "shapes", "--batch_size", "16", "--num_workers", "0", "--sample_every", "2",
             "--log_every", "2", "--ckpt_every", "2", "--device", "cpu", "--precision", "fp32"]


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _run(capsys: pytest.CaptureFixture, tmp_path: Path, *flags: str) -> tuple[int, list[str]]:
    code = main([*CLI_SMALL, "--outdir", str(tmp_path / "runs"), *flags])
    err = re.split(r"[\r\n]", capsys.readouterr().err)  # the progress bar redraws itself with \r
    return code, [line for line in err if line.startswith(("warning", "acgan"))]


def _checkpoints(run_dir: Path) -> dict[str, int]:
    """Every checkpoint file on disk, loaded: name -> step (a file that does not load fails the test)."""
    return {p.name: load_checkpoint(p)["step"] for p in sorted((run_dir / "checkpoints").glob("*.pt"))}


def _full_disk_for(monkeypatch: pytest.MonkeyPatch, steps: set[int], err: int = errno.ENOSPC) -> None:
    save = torch.save

    def maybe_full(obj: object, f: object, *args: object, **kwargs: object) -> None:
        if isinstance(obj, dict) and obj.get("step") in steps:
            f.write(b"PK\x03\x04 part of a checkpoint")  # type: ignore[attr-defined]
            raise OSError(err, os.strerror(err))
        save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", maybe_full)


def test_a_checkpoint_that_does_not_fit_is_retried_and_the_run_goes_on(tmp_path, capsys, monkeypatch):
    _full_disk_for(monkeypatch, {4})
    code, lines = _run(capsys, tmp_path, "--max_steps", "8")
    run_dir = tmp_path / "runs" / "00000-shapes"
    assert code == 0 and len(lines) == 1
    ckpt2 = run_dir / "checkpoints" / "ckpt-00000002.pt"
    assert lines[0].startswith("warning: checkpoint at step 4 not written: could not write ")
    assert "ckpt-00000004.pt: No space left on device (needs about " in lines[0] and " free)" in lines[0]
    assert f"training goes on, next try at step 6 (1/3); last good checkpoint: {ckpt2}" in lines[0]
    assert f"(resume with: acgan train --resume {ckpt2})" in lines[0]
    assert _checkpoints(run_dir) == {"ckpt-00000002.pt": 2, "ckpt-00000006.pt": 6, "ckpt-00000008.pt": 8,
                                     "last.pt": 8}  # no temp file either: only *.pt names, all loadable
    assert not list((run_dir / "checkpoints").glob(".*"))


def test_three_failed_checkpoints_in_a_row_stop_the_run_with_the_way_back(tmp_path, capsys, monkeypatch):
    _full_disk_for(monkeypatch, {4, 6, 8}, errno.EDQUOT)
    code, lines = _run(capsys, tmp_path, "--max_steps", "20")
    run_dir = tmp_path / "runs" / "00000-shapes"
    ckpt2 = run_dir / "checkpoints" / "ckpt-00000002.pt"
    assert code == 1 and len(lines) == 3 and "(2/3)" in lines[1]
    assert lines[2].startswith("acgan train: error: checkpoint at step 8 not written (3 in a row): could not write")
    assert "Disk quota exceeded" in lines[2] and lines[2].endswith(f"(resume with: acgan train --resume {ckpt2})")
    assert _checkpoints(run_dir) == {"ckpt-00000002.pt": 2, "last.pt": 2}


def test_the_checkpoint_a_run_ends_on_must_be_written(tmp_path, capsys, monkeypatch):
    _full_disk_for(monkeypatch, {6})
    code, lines = _run(capsys, tmp_path, "--max_steps", "6")
    assert code == 1 and lines[-1].startswith("acgan train: error: checkpoint at step 6 not written: ")
    assert _checkpoints(tmp_path / "runs" / "00000-shapes") == {"ckpt-00000004.pt": 4, "ckpt-00000002.pt": 2,
                                                               "last.pt": 4}


def test_samples_plots_stats_and_tensorboard_are_best_effort(tmp_path, capsys, monkeypatch):
    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "runs"))

    for name in ("save_grid", "write_plots", "append_line"):
        monkeypatch.setattr(acgan.runlog, name, denied)
    monkeypatch.setattr(acgan.train, "save_grid", denied)  # the real-images grid at the start
    monkeypatch.setattr(acgan.runlog.RunLog, "_writer", denied)
    code, lines = _run(capsys, tmp_path, "--max_steps", "6")
    assert code == 0
    assert sorted(line.split(" not written")[0] for line in lines) == [
        "warning: TensorBoard event", "warning: plots", "warning: real images grid", "warning: sample grid",
        "warning: stats.jsonl row"]  # each kind once, however often it failed
    assert all("Permission denied" in line for line in lines)
    assert _checkpoints(tmp_path / "runs" / "00000-shapes")["last.pt"] == 6


def test_an_unwritable_outdir_is_refused_before_any_data_is_loaded(tmp_path, capsys, monkeypatch):
    def no_data(*args: object) -> None:
        raise AssertionError("data was loaded for a run that cannot write anything")

    monkeypatch.setattr(acgan.train, "load_train_data", no_data)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    code, lines = _run(capsys, tmp_path, "--max_steps", "2", "--outdir", str(blocker / "runs"))
    assert code == 1 and lines == [f"acgan train: error: --outdir {blocker / 'runs'} cannot be written (Not a "
                                   "directory): choose another folder or fix its permissions"]


@pytest.mark.slow
def test_under_torchrun_every_rank_learns_that_checkpoints_cannot_be_written(tmp_path):
    code, out = _torchrun(tmp_path, "--disk_full_from", "4", *TRAIN_ARGS, "--max_steps", "12", "--ckpt_every", "2",
                          "--log_every", "2", "--outdir", str(tmp_path / "runs"))
    assert code != 0, out[-2000:]
    assert "checkpoint at step 8 not written (3 in a row)" in out
    assert "(rank 1 of 2): stopping: rank 0 could not write checkpoints" in out
    assert _checkpoints(tmp_path / "runs" / "00000-shapes") == {"ckpt-00000002.pt": 2, "last.pt": 2}


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_real_small_tmpfs(tmp_path, capsys):
    disk = tmp_path / "disk"
    disk.mkdir()
    # 60 MB: the first checkpoint (about 39 MB: the nets and both Adam states) fits, the second does not
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=60m", "tmpfs", str(disk)]).returncode != 0:
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        code = main([*CLI_SMALL, "--ckpt_every", "10", "--max_steps", "60", "--outdir", str(disk)])
        err = capsys.readouterr().err
        run_dir = disk / "00000-shapes"
        assert code == 1 and "checkpoint at step 40 not written (3 in a row)" in err
        assert err.count("not written") >= 3 and "No space left on device" in err
        assert _checkpoints(run_dir) == {"ckpt-00000010.pt": 10, "last.pt": 10}
        for line in (run_dir / "stats.jsonl").read_text().splitlines():
            json.loads(line)  # never a torn row
    finally:
        subprocess.run(["umount", str(disk)], check=False)
