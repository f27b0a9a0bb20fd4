"""The run's outputs on rank 0: stats.jsonl, TensorBoard, sample grids and plots, all best effort.

None of them may end a run: a full or read-only disk turns a failed write into one warning (and a line
when it works again); stats.jsonl never keeps a half-written row. Checkpoints are not written here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from acgan.data import ImageDataset
from acgan.generator import generate
from acgan.plots import read_stats, write_plots
from acgan.sample import make_grid, save_grid
from acgan.storage import BestEffort, append_line


class RunLog:
    """The run's outputs on rank 0: stats.jsonl, TensorBoard, sample grids and plots (no-ops elsewhere)."""

    def __init__(self, run_dir: Path, is_main: bool, resumed_step: int) -> None:
        self.run_dir, self.is_main, self._tb = run_dir, is_main, None
        self.stats_path = run_dir / "stats.jsonl"
        self.attempt = BestEffort()
        if is_main and resumed_step and self.stats_path.is_file():
            # rows past the checkpoint will be written again, identically, by the resumed run
            kept = [r for r in read_stats(self.stats_path) if r["step"] <= resumed_step]
            self.attempt("stats.jsonl", self.stats_path,
                         lambda: self.stats_path.write_text("".join(json.dumps(r) + "\n" for r in kept)))

    def _writer(self) -> Any:
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when first needed

            self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))
        return self._tb

    def _tensorboard(self, write: Any) -> None:
        """TensorBoard writes from a thread of its own and raises a failed write at a later call: all caught."""
        self.attempt("TensorBoard event", self.run_dir / "tensorboard", lambda: write(self._writer()))

    def stats(self, row: dict[str, float]) -> None:
        """Append one row to stats.jsonl and TensorBoard."""
        if not self.is_main:
            return
        self.attempt("stats.jsonl row", self.stats_path, lambda: append_line(self.stats_path, json.dumps(row)))

        def scalars(tb: Any) -> None:
            for key, value in row.items():
                if key not in ("step", "epoch"):
                    tb.add_scalar(f"train/{key}", value, row["step"])

        self._tensorboard(scalars)

    def samples(self, G: nn.Module, z: torch.Tensor, y: torch.Tensor, step: int, num_cols: int) -> None:
        """Fixed-noise grid, one row per class, into samples/ and TensorBoard; plots redrawn."""
        if not self.is_main:
            return
        was_training = G.training
        images = generate(G.eval(), z, y)
        G.train(was_training)
        path = self.run_dir / "samples" / f"step-{step:08d}.png"
        self.attempt("sample grid", path, lambda: save_grid(images, path, nrow=num_cols))
        grid = torch.from_numpy(make_grid(images, num_cols))
        self._tensorboard(lambda tb: tb.add_image("samples", grid, step, dataformats="HWC"))
        self.plots()

    def plots(self) -> None:
        """Redraw the curves from stats.jsonl."""
        plots_dir = self.run_dir / "plots"
        self.attempt("plots", plots_dir, lambda: write_plots(self.stats_path, plots_dir))

    def close(self) -> None:
        """Flush TensorBoard and draw the final plots."""
        if self.is_main:
            self.plots()
            if self._tb is not None:
                self._tensorboard(lambda tb: tb.close())


def real_grid(dataset: ImageDataset, per_class: int) -> torch.Tensor:
    """uint8 grid of real images, one row per class, to set beside the samples (short classes padded white)."""
    S, rows = dataset.image_size, []
    for c in range(dataset.num_classes):
        idx = (dataset.labels == c).nonzero().flatten()[:per_class]
        pad = torch.full((per_class - len(idx), 3, S, S), 255, dtype=torch.uint8)
        rows.append(torch.cat([dataset.images[idx], pad]))
    return torch.cat(rows)  # (K * per_class, 3, S, S)
