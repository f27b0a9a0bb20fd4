"""Streaming from host memory or a memory map gives the resident path's batches, bit for bit, and trains the same."""

from __future__ import annotations

import shutil
import threading

import pytest
import torch

from acgan.checkpoint import load_checkpoint
from acgan.config import TrainConfig
from acgan.data import EpochSampler, StreamSampler, load_dataset, make_sampler, open_prepared
from acgan.data import sampler as sampler_module
from acgan.data.prepare import decoded_source, prepare
from acgan.train import train

SMALL = dict(batch_size=16, num_workers=0, log_every=2, sample_every=4, ckpt_every=3)


@pytest.fixture(scope="module")
def prepared_shapes(tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "shapes"
    prepare(decoded_source("shapes", None, 32), out, show_progress=False)
    return out


def _batches(sampler, epoch, start=0, limit=None):
    out = []
    for i, (x, y) in enumerate(sampler.epoch(epoch, start)):
        if limit is not None and i == limit:
            break
        out.append((x.clone(), y.clone()))
    return out


@pytest.mark.parametrize("rank, world_size", [(0, 1), (1, 2)])
def test_streamed_batches_equal_resident_ones_in_ram_and_memory_mapped(prepared_shapes, rank, world_size):
    shard = dict(seed=3, rank=rank, world_size=world_size, device="cpu")
    resident = EpochSampler(load_dataset("shapes", None), 64, **shard)
    for dataset in (load_dataset("shapes", None), open_prepared(prepared_shapes)):
        streamed = StreamSampler(dataset, 64, **shard)
        assert streamed.num_batches == resident.num_batches
        for epoch, start in ((0, 0), (2, 5)):
            a, b = _batches(resident, epoch, start), _batches(streamed, epoch, start)
            assert len(a) == len(b) == resident.num_batches - start
            assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True))


def test_the_gpu_path_s_thread_gives_the_same_batches_and_ends_with_its_epoch(prepared_shapes):
    resident = EpochSampler(load_dataset("shapes", None), 16, seed=0, device="cpu")
    streamed = StreamSampler(open_prepared(prepared_shapes), 16, seed=0, device="cpu")
    streamed.background = True  # what a GPU gets: a thread gathers ahead (here without pinning)
    a, b = _batches(resident, 1, 3), _batches(streamed, 1, 3)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True))
    assert len(_batches(streamed, 0, limit=2)) == 2  # leaving early, with the thread blocked on a full queue
    assert not any(t.name == "acgan-stream" for t in threading.enumerate())


def test_streaming_a_prepared_file_reads_it_instead_of_mapping_it_and_read_errors_reach_the_loop(
        prepared_shapes, tmp_path):
    dataset = open_prepared(prepared_shapes)
    reads = []
    real_read = dataset.backing.read_rows
    dataset.backing.read_rows = lambda rows, out: reads.append(len(rows)) or real_read(rows, out)
    assert len(_batches(StreamSampler(dataset, 16, seed=0, device="cpu"), 0, limit=3)) == 3
    # every batch by pread (the fourth was taken when the loop stopped): no page of the map is touched
    assert reads == [16] * 4
    copy = tmp_path / "copy"
    shutil.copytree(prepared_shapes, copy)
    damaged = open_prepared(copy)
    with open(copy / "images.u8", "r+b") as f:  # the file shrinks under a running job
        f.truncate(3 * 32 * 32 * 100)
    for background in (False, True):  # in place, and from the GPU path's thread
        streamed = StreamSampler(damaged, 16, seed=0, device="cpu")
        streamed.background = background
        with pytest.raises(OSError, match="short read"):
            _batches(streamed, 0)


def test_auto_streams_only_data_over_the_budget_and_says_so(prepared_shapes, monkeypatch):
    dataset = open_prepared(prepared_shapes)  # 10,000 images of 3 KB: 30.7 MB
    sampler, line = make_sampler(dataset, 16, device=torch.device("cpu"), seed=0)
    assert isinstance(sampler, EpochSampler) and not isinstance(sampler, StreamSampler) and "resident" in line
    monkeypatch.setattr(sampler_module, "resident_budget", lambda device: 10_000_000)
    sampler, line = make_sampler(dataset, 16, device=torch.device("cpu"), seed=0)
    assert isinstance(sampler, StreamSampler)
    assert "streamed from its prepared file" in line and "over the 10.0 MB budget" in line
    sampler, line = make_sampler(dataset, 16, device=torch.device("cpu"), seed=0, stream="off")
    assert not isinstance(sampler, StreamSampler) and "--stream off" in line


def test_training_from_a_prepared_stream_and_its_resume_match_the_in_ram_run(prepared_shapes, tmp_path):
    in_ram = train(TrainConfig(**SMALL, dataset="shapes", outdir=str(tmp_path / "a"), max_steps=6))
    streamed = dict(SMALL, dataset="prepared", root_dir=str(prepared_shapes), stream="on")
    train(TrainConfig(**streamed, outdir=str(tmp_path / "b"), max_steps=4))
    resumed = train(TrainConfig(**streamed, outdir=str(tmp_path / "b"), max_steps=6, resume="auto"),
                    explicit=frozenset({"max_steps", "resume"}))
    a, b = (load_checkpoint(run / "checkpoints" / "last.pt") for run in (in_ram, resumed))
    assert a["step"] == b["step"] == 6
    for net in ("G", "D"):
        assert all(torch.equal(a[net][k], b[net][k]) for k in a[net])
    assert '"data_placement": "stream"' in (resumed / "config.json").read_text()


def test_train_cli_takes_a_prepared_directory_s_image_size_and_names_a_missing_one(tmp_path, capsys):
    from acgan.cli import main
    from acgan.data.prepare import folder_source
    from tests.test_prepare import make_jpeg_folder

    prepared = tmp_path / "prepared"
    prepare(folder_source(make_jpeg_folder(tmp_path / "src", per_class=2), 64), prepared, show_progress=False)
    args = ["train", "--dataset", "prepared", "--batch_size", "4", "--max_steps", "1", "--num_workers", "0",
            "--outdir", str(tmp_path / "runs")]
    assert main([*args, "--root_dir", str(prepared)]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert '"image_size": 64' in (run_dir / "config.json").read_text()
    capsys.readouterr()  # the first run's progress bar
    assert main([*args, "--root_dir", str(tmp_path / "src")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a prepared dataset" in err[0]
