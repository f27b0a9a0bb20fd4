"""Real `acgan train` processes stopped by SIGTERM, SIGINT (once and twice) and kill -9, then resumed.

Every interrupted-and-resumed run must end with bit-identical weights, Adam states and RNG state to a run
that never stopped (same seed, CPU, one thread). Progress is read by polling the run directory; no sleep
stands in for synchronisation.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from acgan.checkpoint import latest_checkpoint, load_checkpoint
from acgan.plots import read_stats

pytestmark = pytest.mark.slow

STEPS, CKPT_EVERY = 30, 5
FLAGS = ["--dataset", "shapes", "--batch_size", "16", "--ckpt_every", str(CKPT_EVERY), "--log_every", "1",
         "--sample_every", "1000", "--num_workers", "0", "--device", "cpu", "--precision", "fp32", "--seed", "3",
         "--max_steps", str(STEPS)]
# One thread: the same arithmetic in every run (and no oversubscription of a busy machine).
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
TIMEOUT = 300  # seconds for any one run, generous for a loaded 2-core machine


class Run:
    """One `python -m acgan train` process writing under outdir, its output in a log file."""

    def __init__(self, outdir: Path, name: str, *extra: str) -> None:
        self.run_dir = outdir / "00000-shapes"
        self.log_path = outdir.parent / f"{outdir.name}-{name}.log"
        with self.log_path.open("w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "acgan", "train", *FLAGS, "--outdir", str(outdir),
                                          *extra], stdout=log, stderr=subprocess.STDOUT, env=ENV,
                                         start_new_session=True)  # no stray terminal Ctrl-C reaches it

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def logged_step(self) -> int:
        """The last step with a row in stats.jsonl: that many steps are done."""
        rows = read_stats(self.run_dir / "stats.jsonl")
        return int(rows[-1]["step"]) if rows else 0

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        """Poll the run's files until condition holds; fail if the process ends first or time runs out."""
        deadline = time.monotonic() + TIMEOUT
        while not condition():
            assert self.proc.poll() is None, f"run ended (rc {self.proc.returncode}) before {what}:\n{self.output()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.01)  # polling interval

    def finish(self) -> int:
        """Wait for the process to end; its exit status (negative: killed by that signal)."""
        return self.proc.wait(timeout=TIMEOUT)


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    """Runs a test starts; any still alive when it ends (a failed assertion) are killed by pid."""
    started: list[Run] = []
    yield started
    for run in started:
        if run.proc.poll() is None:
            run.proc.kill()
            run.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], dict]]:
    """The uninterrupted run, started at once so that it trains while the first test does; its final state."""
    run = Run(tmp_path_factory.mktemp("reference") / "out", "straight")
    cache: dict[str, dict] = {}

    def state() -> dict:
        if not cache:
            assert run.finish() == 0, run.output()
            cache["state"] = load_checkpoint(run.run_dir / "checkpoints" / "last.pt")
        return cache["state"]

    yield state
    if run.proc.poll() is None:
        run.proc.kill()
        run.proc.wait(timeout=60)


def _assert_same_training(a: dict, b: dict) -> None:
    """Weights, Adam moments, position and RNG state all bit-identical."""
    assert (a["step"], a["epoch"], a["batch"]) == (b["step"], b["epoch"], b["batch"])
    for net in ("G", "D"):
        assert a[net].keys() == b[net].keys()
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key} differs"
    for opt in ("opt_G", "opt_D"):
        assert a[opt]["param_groups"] == b[opt]["param_groups"]
        for index, moments in a[opt]["state"].items():
            for key, value in moments.items():
                assert torch.equal(value, b[opt]["state"][index][key]), f"{opt} state {index}.{key} differs"
    assert torch.equal(a["rng"]["cpu"], b["rng"]["cpu"])


def _ckpt_step(path: Path) -> int:
    return int(path.stem.split("-")[1])


def _assert_checkpoints_intact(run_dir: Path) -> None:
    """Every checkpoint file loads completely: last.pt is never truncated, whatever moment the kill hit."""
    for path in (run_dir / "checkpoints").glob("*.pt"):
        state = load_checkpoint(path)
        assert {"G", "D", "opt_G", "opt_D", "rng"} <= state.keys()
        if path.name.startswith("ckpt-"):
            assert state["step"] == _ckpt_step(path)


def _numbered_after(run_dir: Path, step: int) -> bool:
    return any(_ckpt_step(p) > step for p in (run_dir / "checkpoints").glob("ckpt-*.pt"))


def _stop_by_signal(run: Run, signum: int, target: int) -> int:
    """Let the run pass `target` steps, send signum: it must finish the step, checkpoint and exit 0 quickly."""
    run.wait_until(lambda: run.logged_step() >= target, f"step {target}")
    run.proc.send_signal(signum)
    sent = time.monotonic()
    assert run.finish() == 0, run.output()
    assert time.monotonic() - sent < 60  # seconds: finish one step, one checkpoint, final plots
    out = run.output()
    assert f"{signal.Signals(signum).name} received" in out and "Traceback" not in out
    stopped = load_checkpoint(latest_checkpoint(run.run_dir))["step"]
    assert target <= stopped < STEPS and f"stopped at step {stopped}" in out
    assert (run.run_dir / "checkpoints" / f"ckpt-{stopped:08d}.pt").is_file()  # written at the stop itself
    return stopped


def _kill9(run: Run, after: int, at_boundary: bool, rng: random.Random) -> None:
    """kill -9 right after a new checkpoint appears, or at a random step; nothing may be lost beyond ckpt_every."""
    if at_boundary:
        run.wait_until(lambda: _numbered_after(run.run_dir, after), "a new checkpoint")
    else:
        target = rng.randint(after + 2, after + 12)
        run.wait_until(lambda: run.logged_step() >= target, f"step {target}")
    run.proc.kill()
    assert run.finish() == -signal.SIGKILL
    done = run.logged_step()
    _assert_checkpoints_intact(run.run_dir)
    newest = load_checkpoint(latest_checkpoint(run.run_dir))["step"]
    assert newest > after and done - newest <= CKPT_EVERY


@pytest.mark.parametrize(("seed", "signum", "at_boundary"), [
    pytest.param(0, signal.SIGTERM, True, id="SIGTERM-then-kill9-after-a-checkpoint"),
    pytest.param(1, signal.SIGINT, False, id="SIGINT-then-kill9-at-a-random-step"),
])
def test_signal_then_kill9_then_resume_equals_an_uninterrupted_run(tmp_path: Path, runs: list[Run],
                                                                   reference: Callable[[], dict], seed: int,
                                                                   signum: int, at_boundary: bool) -> None:
    rng, outdir = random.Random(seed), tmp_path / "out"
    runs.append(Run(outdir, "first"))
    stopped = _stop_by_signal(runs[-1], signum, target=rng.randint(CKPT_EVERY + 1, 12))
    runs.append(Run(outdir, "second", "--resume", "auto"))
    assert runs[-1].proc.pid != runs[0].proc.pid
    _kill9(runs[-1], stopped, at_boundary, rng)
    newest = load_checkpoint(latest_checkpoint(runs[-1].run_dir))["step"]
    runs.append(Run(outdir, "third", "--resume", "auto"))
    assert runs[-1].finish() == 0, runs[-1].output()
    assert f"steps {newest} -> {STEPS}" in runs[-1].output()  # resumed from the newest complete checkpoint
    assert sorted(p.name for p in outdir.iterdir()) == ["00000-shapes"]  # continued in place
    assert not list((outdir / "00000-shapes" / "checkpoints").glob(".*.tmp"))  # a dead save's temp was cleaned
    _assert_same_training(load_checkpoint(outdir / "00000-shapes" / "checkpoints" / "last.pt"), reference())


def test_second_sigint_exits_at_once_without_damage(tmp_path: Path, runs: list[Run],
                                                    reference: Callable[[], dict]) -> None:
    outdir = tmp_path / "out"
    run = Run(outdir, "first")
    runs.append(run)
    run.wait_until(lambda: run.logged_step() >= CKPT_EVERY + 2, f"step {CKPT_EVERY + 2}")
    run.proc.send_signal(signal.SIGINT)
    run.wait_until(lambda: "SIGINT received" in run.output(), "the first SIGINT to be handled")
    # still stopping (a step, a checkpoint and the plots to go): the second SIGINT must cut that short
    assert "stopped at step" not in run.output(), "the first stop completed before the second SIGINT was sent"
    run.proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    assert run.finish() == 130, run.output()
    assert time.monotonic() - sent < 30
    out = run.output()
    assert "acgan train: interrupted" in out and "Traceback" not in out and "stopped at step" not in out
    _assert_checkpoints_intact(run.run_dir)
    runs.append(Run(outdir, "resumed", "--resume", "auto"))
    assert runs[-1].finish() == 0, runs[-1].output()
    _assert_same_training(load_checkpoint(run.run_dir / "checkpoints" / "last.pt"), reference())
