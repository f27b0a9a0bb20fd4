"""Training curves from stats.jsonl: G/D losses, D's class accuracy, and D(x), D(G(z1)), D(G(z2))."""

from __future__ import annotations

import json
import os
from pathlib import Path

PLOTS = {
    "losses.png": ("G and D losses", "loss", {"loss_D": "loss_D", "loss_G": "loss_G"}),
    "class_accuracy.png": ("D's class accuracy", "accuracy",
                           {"acc_real": "on real images", "acc_fake": "on generated images"}),
    "d_outputs.png": ("D's source output (probability of real)", "D(.)",
                      {"D_x": "D(x)", "D_G_z1": "D(G(z1)) before D step", "D_G_z2": "D(G(z2)) after D step"}),
}


def read_stats(path: Path) -> list[dict[str, float]]:
    """Rows of stats.jsonl, one per step: rows of one step merge (later values win); torn lines are skipped."""
    by_step: dict[int, dict[str, float]] = {}
    if not path.is_file():
        return []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(row, dict) and "step" in row:
            by_step.setdefault(int(row["step"]), {}).update(row)
    return [by_step[s] for s in sorted(by_step)]


def write_plots(stats_path: Path, plots_dir: Path) -> list[Path]:
    """(Re)draw every plot from stats.jsonl into plots_dir; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    rows = read_stats(stats_path)
    if not rows:
        return []
    plots_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, (title, ylabel, series) in PLOTS.items():
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        for key, label in series.items():
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, label=label, linewidth=1.2)
        ax.set(title=title, xlabel="step", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(loc="best")
        fig.tight_layout()
        tmp = plots_dir / f".{filename}.tmp.png"
        try:
            fig.savefig(tmp)
            os.replace(tmp, plots_dir / filename)  # a viewer never sees a half-written PNG
        finally:
            plt.close(fig)
            tmp.unlink(missing_ok=True)  # what a full disk left of it
        written.append(plots_dir / filename)
    return written
