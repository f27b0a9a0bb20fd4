"""`acgan sample`: images by class, grids with one row per class, class sweeps and interpolations."""

import numpy as np
import pytest
import torch
from data_fixtures import generator_checkpoint, with_ema
from PIL import Image

from acgan.cli import main
from acgan.config import TrainConfig
from acgan.errors import UserError
from acgan.generator import class_grid_inputs, resolve_class, slerp
from acgan.sample import make_grid, write_samples
from acgan.train import train


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    run_dir = train(TrainConfig(dataset="shapes", batch_size=16, max_steps=1, outdir=str(out), num_workers=0))
    return run_dir / "checkpoints" / "last.pt"


def test_resolve_class_by_index_or_name():
    names = ("airplane", "automobile", "cat")
    assert resolve_class("2", names) == 2 and resolve_class("cat", names) == 2 and resolve_class("CAT", names) == 2
    with pytest.raises(UserError, match="unknown class 'dog'"):
        resolve_class("dog", names)
    with pytest.raises(UserError):
        resolve_class("3", names)


def test_grid_rows_are_classes_and_columns_share_z():
    z, y = class_grid_inputs(num_classes=3, num_per_class=4, nz=5, seed=0)
    assert z.shape == (12, 5) and y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert torch.equal(z[0], z[4]) and torch.equal(z[1], z[9]) and not torch.equal(z[0], z[1])


def test_make_grid_places_images_row_major():
    images = torch.zeros(6, 3, 2, 2, dtype=torch.uint8)
    images[4] = 200  # row 1, column 1 of a 3-column grid
    grid = make_grid(images, nrow=3, pad=1)
    assert grid.shape == (2 * 3 + 1, 3 * 3 + 1, 3)
    assert (grid[4:6, 4:6] == 200).all() and (grid[1:3, 1:3] == 0).all() and (grid[0] == 255).all()


def test_slerp_hits_both_ends():
    z0, z1 = torch.randn(8), torch.randn(8)
    path = slerp(z0, z1, torch.tensor([0.0, 0.5, 1.0]))
    assert torch.allclose(path[0], z0, atol=1e-5) and torch.allclose(path[2], z1, atol=1e-5)


def test_write_samples_makes_grid_sweep_and_interpolation(checkpoint, tmp_path):
    dest = write_samples(checkpoint, tmp_path, class_spec=None, num=4, num_steps=5, seed=0,
                         device=torch.device("cpu"))
    names = {p.name for p in dest.iterdir()}
    assert names == {"class_grid.png", "class_sweep.png", "interpolation.png"}
    w, h = Image.open(dest / "class_grid.png").size
    assert (w, h) == (4 * 34 + 2, 10 * 34 + 2)  # 4 columns, 10 classes of 32px images with 2px borders
    assert Image.open(dest / "interpolation.png").size == (5 * 34 + 2, 10 * 34 + 2)
    again = write_samples(checkpoint, tmp_path, class_spec=None, num=4, num_steps=5, seed=0,
                          device=torch.device("cpu"))
    assert again != dest and (dest / "class_grid.png").is_file()  # a second call never overwrites


def test_write_samples_of_one_class_by_name(checkpoint, tmp_path):
    dest = write_samples(checkpoint, tmp_path, class_spec="star", num=3, num_steps=2, seed=0,
                         device=torch.device("cpu"))
    assert sorted(p.name for p in dest.iterdir()) == ["star-0000.png", "star-0001.png", "star-0002.png",
                                                     "star-grid.png"]
    assert Image.open(dest / "star-0000.png").size == (32, 32)


def test_sample_draws_the_raw_g_on_request_into_a_folder_that_says_so(tmp_path):
    both = with_ema(generator_checkpoint(tmp_path / "plain.pt", step=5, ema_decay=0.999), tmp_path / "both.pt")
    out = tmp_path / "out"
    common = ["sample", "--checkpoint", str(both), "--class", "star", "--num", "2", "--out_dir", str(out)]
    assert main(common) == 0 and main([*common, "--weights", "raw"]) == 0
    (ema_dir,) = out.glob("*-step5")
    (raw_dir,) = out.glob("*-step5-raw")
    ema_png, raw_png = (np.asarray(Image.open(d / "star-0000.png")) for d in (ema_dir, raw_dir))
    assert not np.array_equal(ema_png, raw_png)  # same seed, other weights
