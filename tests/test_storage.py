"""Writes on a failing disk: the one-line description, whole-or-nothing stats rows, best-effort writes."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from acgan.errors import UserError
from acgan.storage import BestEffort, append_line, check_writable_dir, describe, human_bytes, is_storage_error


def test_the_description_names_the_file_the_reason_the_need_and_the_free_space(tmp_path: Path) -> None:
    line = describe(tmp_path / "ckpt.pt", OSError(errno.ENOSPC, "x"), needed=39_100_000)
    assert line.startswith(f"could not write {tmp_path / 'ckpt.pt'}: No space left on device (needs about 39.1 MB; ")
    assert line.endswith(" free)") and "\n" not in line
    assert describe(tmp_path / "f", OSError(errno.EACCES, "x")).endswith("Permission denied (" +
                                                                           line.split("; ")[1])


def test_human_bytes() -> None:
    assert [human_bytes(n) for n in (512, 1536, 39_100_000, 2.5e12)] == ["512 B", "1.5 KB", "39.1 MB", "2.5 TB"]


def test_storage_errors_are_told_from_bugs() -> None:
    assert is_storage_error(OSError(errno.ENOSPC, "")) and is_storage_error(OSError(errno.EROFS, ""))
    assert not is_storage_error(OSError(errno.ENOENT, "")) and not is_storage_error(ValueError())


def test_a_row_cut_short_by_a_full_disk_leaves_no_torn_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "stats.jsonl"
    append_line(path, '{"step": 1}')
    real_write = os.write
    calls = []

    def half_then_full(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))  # the disk took half the row ...
        raise OSError(errno.ENOSPC, "No space left on device")  # ... and refuses the rest

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(OSError):
        append_line(path, '{"step": 2, "loss_D": 1.234567}')
    monkeypatch.undo()
    assert path.read_text() == '{"step": 1}\n'
    append_line(path, '{"step": 2}')
    assert path.read_text().splitlines() == ['{"step": 1}', '{"step": 2}']


def test_best_effort_warns_once_while_failing_and_once_when_it_works_again(tmp_path: Path,
                                                                          capsys: pytest.CaptureFixture) -> None:
    attempt, failing = BestEffort(), [True, True, False]

    def write() -> str:
        if failing.pop(0):
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "plot.png"))
        return "done"

    assert attempt("plots", tmp_path, write) is None and attempt("plots", tmp_path, write) is None
    assert attempt("plots", tmp_path, write) == "done"
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "plots not written, training goes on: could not write" in lines[0]
    assert "No space left on device" in lines[0] and "plots written again" in lines[1]
    with pytest.raises(FileNotFoundError):  # not the disk's fault: a bug, not a warning
        attempt("plots", tmp_path, (tmp_path / "missing" / "x").read_text)


def test_an_unwritable_folder_is_refused_in_one_line(tmp_path: Path) -> None:
    check_writable_dir(tmp_path / "new" / "runs")
    assert (tmp_path / "new" / "runs").is_dir() and list((tmp_path / "new" / "runs").iterdir()) == []
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match=r"--outdir .*file/runs cannot be written \(Not a directory\)"):
        check_writable_dir(blocker / "runs")
