"""Checkpoints and run directories: atomic writes, safe loading, numbering, pruning."""

import os
import pickle

import pytest
import torch

from acgan.checkpoint import (
    atomic_save,
    latest_checkpoint,
    latest_run_dir,
    load_checkpoint,
    new_run_dir,
    save_checkpoint,
)
from acgan.errors import UserError


def _state(step=1):
    return {"G": {"w": torch.randn(3)}, "D": {"w": torch.randn(2)}, "config": {"lr": 0.1}, "step": step,
            "class_names": ["a", "b"]}


class _Payload:
    """Unpickling this runs code: it would create the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_round_trip_keeps_tensors_and_values(tmp_path):
    state = _state(7)
    atomic_save(state, tmp_path / "x.pt")
    loaded = load_checkpoint(tmp_path / "x.pt")
    assert loaded["step"] == 7 and torch.equal(loaded["G"]["w"], state["G"]["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]  # no temp files left behind


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({**_state(), "evil": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refusing to load"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_a_plain_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(UserError):
        load_checkpoint(tmp_path / "evil.pt")
    assert not marker.exists()


def test_truncated_and_foreign_files_are_clear_errors(tmp_path):
    atomic_save(_state(), tmp_path / "good.pt")
    data = (tmp_path / "good.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="truncated or corrupt"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "foreign.pt")
    with pytest.raises(UserError, match="not an acgan checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(UserError):
        load_checkpoint(tmp_path / "text.pt")
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_save_checkpoint_links_last_and_prunes_old_ones(tmp_path):
    for step in (10, 20, 30, 40):
        save_checkpoint(_state(step), tmp_path, step, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["ckpt-00000030.pt", "ckpt-00000040.pt", "last.pt"]
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 40
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "last.pt"


def test_failed_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    save_checkpoint(_state(1), tmp_path, 1, keep=3)

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(UserError, match="No space left"):
        save_checkpoint(_state(2), tmp_path, 2, keep=3)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 1
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["ckpt-00000001.pt", "last.pt"]


def test_run_dirs_are_numbered_after_the_highest_existing(tmp_path):
    (tmp_path / "00000-cifar10").mkdir()
    (tmp_path / "00005-shapes").mkdir()
    (tmp_path / "notes").mkdir()
    assert new_run_dir(tmp_path, "folder").name == "00006-folder"
    assert new_run_dir(tmp_path, "folder").name == "00007-folder"


def test_latest_run_dir_skips_runs_without_checkpoints(tmp_path):
    save_checkpoint(_state(), tmp_path / "00001-shapes", 1, keep=1)
    (tmp_path / "00002-shapes").mkdir()
    assert latest_run_dir(tmp_path) == tmp_path / "00001-shapes"
    assert latest_run_dir(tmp_path / "nothing-here") is None
