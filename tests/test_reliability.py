"""Reliability: a kill at any moment, a full disk or a diverging run never costs more than the last checkpoint.

Signals and kill -9 against real training processes are in test_reliability_signals.py, hostile data files
in test_reliability_input.py, fuzzing in test_fuzz.py.
"""

from __future__ import annotations

import errno
import os
import pathlib
from pathlib import Path

import pytest
import torch

import acgan.train
from acgan.checkpoint import atomic_save, latest_checkpoint, load_checkpoint, resolve_resume, save_checkpoint
from acgan.cli import main
from acgan.config import TrainConfig
from acgan.errors import UserError
from acgan.train import train

SMALL = dict(dataset="shapes", batch_size=16, num_workers=0, sample_every=1000, device="cpu", precision="fp32")
CLI_SMALL = ["--dataset", "shapes", "--batch_size", "16", "--num_workers", "0", "--sample_every", "1000",
             "--device", "cpu", "--precision", "fp32"]


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """In-process training on one thread: the paper nets crawl when threads oversubscribe a busy 2-core box."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class Killed(BaseException):
    """Stands in for kill -9: nothing after the point where it is raised runs, no except clause catches it."""


def _state(step: int) -> dict:
    return {"G": {"w": torch.full((3,), float(step))}, "D": {"w": torch.zeros(2)}, "config": {"lr": 0.1},
            "step": step, "class_names": ["a", "b"]}


def _ckpts(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


# ---------------------------------------------------------------- kill -9 around a save


def test_kill_between_checkpoint_and_relink_resumes_from_the_newer_file(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    run_dir = tmp_path / "00000-shapes"
    save_checkpoint(_state(5), run_dir, 5, keep=3)

    def killed(*args: object) -> None:
        raise Killed

    monkeypatch.setattr(os, "link", killed)  # ckpt-10 is complete, last.pt not yet re-linked
    with pytest.raises(Killed):
        save_checkpoint(_state(10), run_dir, 10, keep=3)
    monkeypatch.undo()
    ckpt_dir = run_dir / "checkpoints"
    assert load_checkpoint(ckpt_dir / "last.pt")["step"] == 5  # still the older, complete file
    assert latest_checkpoint(run_dir) == ckpt_dir / "ckpt-00000010.pt"
    assert resolve_resume("auto", str(tmp_path)) == ckpt_dir / "ckpt-00000010.pt"
    assert resolve_resume(str(run_dir), str(tmp_path)) == ckpt_dir / "ckpt-00000010.pt"


def test_stale_temp_files_are_ignored_and_removed_by_the_next_save(tmp_path: Path) -> None:
    save_checkpoint(_state(5), tmp_path, 5, keep=3)
    ckpt_dir = tmp_path / "checkpoints"
    # What kill -9 leaves mid-save: a half-written temp of ckpt-10, and a temp link of last.pt.
    full = (ckpt_dir / "ckpt-00000005.pt").read_bytes()
    (ckpt_dir / ".ckpt-00000010.pt.k3j2_x.tmp").write_bytes(full[: len(full) // 2])
    os.link(ckpt_dir / "ckpt-00000005.pt", ckpt_dir / ".last.pt.tmp")
    assert latest_checkpoint(tmp_path) == ckpt_dir / "last.pt"
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 5
    save_checkpoint(_state(10), tmp_path, 10, keep=3)
    assert _ckpts(tmp_path) == ["ckpt-00000005.pt", "ckpt-00000010.pt", "last.pt"]
    assert load_checkpoint(ckpt_dir / "last.pt")["step"] == 10


def test_latest_falls_back_to_numbered_checkpoints_when_last_is_missing(tmp_path: Path) -> None:
    for step in (5, 10):
        save_checkpoint(_state(step), tmp_path, step, keep=3)
    (tmp_path / "checkpoints" / "last.pt").unlink()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "ckpt-00000010.pt"


def test_latest_orders_by_step_not_by_name(tmp_path: Path) -> None:
    ckpt_dir = tmp_path / "checkpoints"
    for step in (99_999_999, 100_000_000):  # the step outgrows eight digits
        atomic_save(_state(step), ckpt_dir / f"ckpt-{step:08d}.pt")
    assert latest_checkpoint(tmp_path) == ckpt_dir / "ckpt-100000000.pt"


def test_latest_skips_a_damaged_newest_file_but_names_it_when_nothing_else_is_left(tmp_path: Path) -> None:
    for step in (5, 10):
        save_checkpoint(_state(step), tmp_path, step, keep=3)
    ckpt_dir = tmp_path / "checkpoints"
    (ckpt_dir / "last.pt").unlink()
    newest = ckpt_dir / "ckpt-00000010.pt"
    newest.write_bytes(newest.read_bytes()[:-300])  # damaged from outside (saves themselves are atomic)
    assert latest_checkpoint(tmp_path) == ckpt_dir / "ckpt-00000005.pt"
    (ckpt_dir / "ckpt-00000005.pt").unlink()
    assert latest_checkpoint(tmp_path) == newest
    with pytest.raises(UserError, match="ckpt-00000010.pt is not a readable checkpoint"):
        load_checkpoint(newest)


def test_a_run_that_only_has_last_pt_resumes_from_it(tmp_path: Path) -> None:
    atomic_save(_state(7), tmp_path / "checkpoints" / "last.pt")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "last.pt"
    assert latest_checkpoint(tmp_path / "nothing") is None


# ---------------------------------------------------------------- unwritable outdir, full disk


def _cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    rc = main(["train", *CLI_SMALL, *args])
    return rc, capsys.readouterr().err


def _one_line(err: str) -> str:
    """The error line on stderr (the rest is the progress bar), which must be the only one."""
    lines = [line for line in err.splitlines() if line.startswith("acgan train: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_unwritable_outdir_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    outdir = tmp_path / "readonly"
    outdir.mkdir()
    outdir.chmod(0o500)
    if os.access(outdir, os.W_OK):
        # root ignores the mode bits: make creating anything under outdir fail as the kernel would
        real_mkdir = pathlib.Path.mkdir

        def mkdir(self: Path, *args: object, **kwargs: object) -> None:
            if outdir in self.parents:
                raise PermissionError(errno.EACCES, "Permission denied", str(self))
            real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    try:
        rc, err = _cli(capsys, "--outdir", str(outdir), "--max_steps", "1")
    finally:
        outdir.chmod(0o700)
    line = _one_line(err)
    assert rc == 1 and "--outdir" in line and "Permission denied" in line
    assert list(outdir.iterdir()) == []


def test_outdir_that_is_a_file_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "file").write_text("not a directory")
    rc, err = _cli(capsys, "--outdir", str(tmp_path / "file"), "--max_steps", "1")
    assert rc == 1 and "--outdir" in _one_line(err)


def test_disk_full_keeps_the_last_good_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    flags = ["--outdir", str(tmp_path), "--ckpt_every", "2", "--log_every", "2"]
    assert _cli(capsys, *flags, "--max_steps", "2")[0] == 0
    run_dir = tmp_path / "00000-shapes"

    def disk_full(obj: object, f: object) -> None:
        f.write(b"PK\x03\x04 half a checkpoint")  # type: ignore[attr-defined]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    rc, err = _cli(capsys, *flags, "--max_steps", "4", "--resume", "auto")
    monkeypatch.undo()
    line = _one_line(err)
    assert rc == 1 and "ckpt-00000004.pt" in line and "No space left on device" in line
    assert _ckpts(run_dir) == ["ckpt-00000002.pt", "last.pt"]  # no temp file left either
    assert latest_checkpoint(run_dir) == run_dir / "checkpoints" / "last.pt"
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 2
    # space freed: the same command continues from the surviving checkpoint
    rc, _ = _cli(capsys, *flags, "--max_steps", "4", "--resume", "auto")
    assert rc == 0 and load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] == 4


def test_disk_full_outside_checkpoints_is_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_full(config: object, path: Path, extra: object = None) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(acgan.train, "write_config_json", disk_full)
    rc, err = _cli(capsys, "--outdir", str(tmp_path), "--max_steps", "1")
    line = _one_line(err)
    assert rc == 1 and line.endswith("No space left on device: " + str(tmp_path / "00000-shapes" / "config.json"))


# ---------------------------------------------------------------- divergence


def _inject_nan(monkeypatch: pytest.MonkeyPatch, at_step: int, times: int) -> list[int]:
    """Make the weights non-finite right after step `at_step`, the first `times` times it is reached."""
    real_step, hits = acgan.train.train_step, []

    def step(tr: acgan.train.Trainer, *args: object) -> dict:
        stats = real_step(tr, *args)
        if tr.step + 1 == at_step and len(hits) < times:  # tr.step counts this step once train_step returns
            hits.append(at_step)
            with torch.no_grad():
                next(tr.G_raw.parameters()).view(-1)[0] = float("nan")
        return stats

    monkeypatch.setattr(acgan.train, "train_step", step)
    return hits


def _all_finite(path: Path) -> bool:
    state = load_checkpoint(path)
    return all(bool(t.isfinite().all()) for net in ("G", "D") for t in state[net].values() if t.is_floating_point())


def test_on_nan_stop_names_the_step_and_the_last_good_checkpoint(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    hits = _inject_nan(monkeypatch, at_step=6, times=99)
    config = TrainConfig(**SMALL, outdir=str(tmp_path), log_every=2, ckpt_every=4, max_steps=10, on_nan="stop")
    with pytest.raises(UserError, match=r"diverged at step 6\b.*last good checkpoint: (\S+\.pt)") as info:
        train(config)
    assert hits == [6]
    named = Path(info.value.args[0].split("last good checkpoint: ")[1].split(" ")[0])
    assert load_checkpoint(named)["step"] == 4 and _all_finite(named)
    assert f"--resume {named}" in str(info.value)


def test_on_nan_rollback_reloads_halves_the_rates_and_finishes(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # Checkpoints (every 3) fall between divergence checks (every 4): the one at step 6 sees NaN weights
    # before any check does, and must not be written, or rollback would reload the NaNs.
    hits = _inject_nan(monkeypatch, at_step=5, times=2)
    config = TrainConfig(**SMALL, outdir=str(tmp_path), log_every=4, ckpt_every=3, max_steps=10,
                         on_nan="rollback", max_rollbacks=3, keep_ckpts=10)
    run_dir = train(config)
    assert hits == [5, 5]  # diverged twice: rolled back to step 3 each time
    final = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert final["step"] == 10 and final["rollbacks"] == 2
    for opt in ("opt_G", "opt_D"):  # halved twice, not reset to the checkpoint's rate and halved once
        assert [g["lr"] for g in final[opt]["param_groups"]] == [config.lr / 4]
    numbered = sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))
    assert [p.name for p in numbered][-2:] == ["ckpt-00000009.pt", "ckpt-00000010.pt"]
    assert all(_all_finite(p) for p in numbered)


def test_on_nan_rollback_gives_up_after_max_rollbacks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hits = _inject_nan(monkeypatch, at_step=6, times=99)
    config = TrainConfig(**SMALL, outdir=str(tmp_path), log_every=2, ckpt_every=4, max_steps=10,
                         on_nan="rollback", max_rollbacks=2)
    with pytest.raises(UserError, match=r"diverged at step 6\b.* after 2 rollbacks; last good checkpoint: \S+\.pt"):
        train(config)
    assert hits == [6, 6, 6]
