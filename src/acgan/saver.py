"""The run's checkpoints under a disk that may fill up: rank 0 writes, every rank learns how it went.

A checkpoint that cannot be written is not the end of the run: training goes on and the next interval tries
again, saying so each time. Three failures in a row, or a failure of the checkpoint a run ends on (its last
step, or a SIGTERM), stop the run with one line that names the last good checkpoint and how to resume from
it. Older checkpoints are never touched by a failed save: pruning happens only after a new one is complete.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from acgan import distributed as dist_utils
from acgan.checkpoint import latest_checkpoint, save_checkpoint
from acgan.errors import UserError
from acgan.storage import WriteError, warn

MAX_FAILED_IN_A_ROW = 3


class Saver:
    """Writes numbered checkpoints of one run; a failed write is retried at the next interval."""

    def __init__(self, run_dir: Path, info: dist_utils.DistInfo, keep: int) -> None:
        self.run_dir, self.info, self.keep = run_dir, info, keep
        self.failures = 0
        self.last_good = latest_checkpoint(run_dir) if info.is_main else None

    def where(self) -> str:
        """The last good checkpoint and the command that resumes from it."""
        if self.last_good is None:
            return "no checkpoint of this run was written yet"
        return f"last good checkpoint: {self.last_good} (resume with: acgan train --resume {self.last_good})"

    def save(self, state: Callable[[], dict[str, Any]], step: int, *, final: bool, next_step: int) -> Path | None:
        """Write a checkpoint at `step` (rank 0) and agree on the outcome; raises UserError when the run must stop."""
        outcome: tuple[str, str] | None = None
        path = None
        if self.info.is_main:
            try:
                path = save_checkpoint(state(), self.run_dir, step, self.keep)
                self.last_good, self.failures = path, 0
            except WriteError as e:
                self.failures += 1
                stop = final or self.failures >= MAX_FAILED_IN_A_ROW
                in_a_row = f" ({self.failures} in a row)" if self.failures > 1 else ""
                head = f"checkpoint at step {step} not written{in_a_row}: {e}"
                if stop:
                    outcome = ("stop", f"{head}; {self.where()}")
                else:
                    outcome = ("retry", f"{head}; training goes on, next try at step {next_step} "
                                        f"({self.failures}/{MAX_FAILED_IN_A_ROW}); {self.where()}")
        # every rank must leave the loop together, or the others would wait forever in the next collective
        outcome = dist_utils.broadcast_object(outcome, self.info)
        if outcome is not None:
            kind, text = outcome
            if kind == "stop":
                raise UserError(text if self.info.is_main else f"stopping: rank 0 could not write checkpoints ({text})")
            if self.info.is_main:
                warn(text)
        return path
