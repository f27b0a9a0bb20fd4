"""Plots are drawn from stats.jsonl, which may end in a line torn by a crash."""

import json

from PIL import Image

from acgan.plots import read_stats, write_plots


def test_read_stats_skips_torn_lines_and_merges_rows_of_one_step(tmp_path):
    path = tmp_path / "stats.jsonl"
    rows = [{"step": 1, "loss_D": 3.0}, {"step": 2, "loss_D": 2.0}, {"step": 1, "loss_D": 9.0, "fid": 40.0}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 3, "loss')
    assert read_stats(path) == [{"step": 1, "loss_D": 9.0, "fid": 40.0}, {"step": 2, "loss_D": 2.0}]


def test_write_plots_draws_the_three_figures(tmp_path):
    path = tmp_path / "stats.jsonl"
    keys = ("loss_D", "loss_G", "acc_real", "acc_fake", "D_x", "D_G_z1", "D_G_z2")
    path.write_text("".join(json.dumps({"step": s, **{k: s / 10 for k in keys}}) + "\n" for s in range(1, 6)))
    written = write_plots(path, tmp_path / "plots")
    assert sorted(p.name for p in written) == ["class_accuracy.png", "d_outputs.png", "losses.png"]
    assert all(Image.open(p).size[0] > 100 for p in written)
    assert write_plots(tmp_path / "missing.jsonl", tmp_path / "none") == []
