"""torchrun scale-out on CPU (gloo): ranks stay in lockstep, write once, resume anywhere and fail cleanly."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from acgan import distributed as dist_utils
from acgan.checkpoint import load_checkpoint
from acgan.cli import main
from acgan.config import TrainConfig
from acgan.data import EpochSampler, ImageDataset
from acgan.errors import UserError
from acgan.losses import d_loss_fake, d_loss_real, g_loss
from acgan.models import Discriminator, Generator
from acgan.train import build_trainer

HELPER = Path(__file__).parent / "dist_helpers" / "run_rank.py"
JOB_TIMEOUT_S = 240  # far above a healthy run on a busy 2-core machine, far below a hang
TRAIN_ARGS = ["train", "--dataset", "shapes", "--batch_size", "16", "--num_workers", "0", "--device", "cpu",
              "--precision", "fp32", "--log_every", "2", "--sample_every", "4", "--ckpt_every", "4"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(cwd: Path, *args: str, env: dict[str, str] | None = None,
              launcher: tuple[str, ...] = ()) -> tuple[int, str]:
    """Run the helper on 2 CPU ranks; returns (exit code, stdout+stderr). Kills the whole job on timeout."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
           *launcher, str(HELPER), *args]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        full_env.pop(key, None)
    proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group, so a hung job dies whole
    try:
        out, _ = proc.communicate(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"the 2-rank job hung for {JOB_TIMEOUT_S}s:\n{out[-3000:]}")
    return proc.returncode, out


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Torch on one thread in this process: on a busy 2-core machine, OpenMP threads spin against each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """4 steps of `acgan train` on 2 ranks; each rank dumps its final parameters into dumps/."""
    root = tmp_path_factory.mktemp("ddp")
    (root / "dumps").mkdir()
    code, out = _torchrun(root, "--dump", str(root / "dumps"), *TRAIN_ARGS, "--max_steps", "4",
                          "--outdir", str(root / "runs"))
    assert code == 0, out[-3000:]
    return root, out


@pytest.mark.slow
def test_two_ranks_hold_identical_nets_equal_to_the_checkpoint(two_rank_run):
    root, _ = two_rank_run
    ranks = [torch.load(root / "dumps" / f"rank{r}.pt") for r in (0, 1)]
    state = load_checkpoint(root / "runs" / "00000-shapes" / "checkpoints" / "last.pt")
    assert state["step"] == ranks[0]["step"] == ranks[1]["step"] == 4
    for net in ("G", "D"):
        params = ranks[0][net]
        assert params.keys() == ranks[1][net].keys() and params
        for name, value in params.items():
            assert torch.equal(value, ranks[1][net][name]), f"{net}.{name} differs between ranks"
            assert torch.equal(value, state[net][name]), f"{net}.{name} differs from rank 0's checkpoint"


@pytest.mark.slow
def test_only_rank_0_writes_one_run(two_rank_run):
    root, out = two_rank_run
    run_dir = root / "runs" / "00000-shapes"
    assert list((root / "runs").iterdir()) == [run_dir]
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {"ckpt-00000004.pt", "last.pt"}
    assert [json.loads(line)["step"] for line in (run_dir / "stats.jsonl").read_text().splitlines()] == [2, 4]
    config = json.loads((run_dir / "config.json").read_text())
    assert (config["world_size"], config["global_batch_size"], config["batch_size"]) == (2, 32, 16)
    assert out.count("global batch 32") == 1 and out.count("finished at step 4") == 1  # rank 0 alone prints
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["world_size"] == 2


@pytest.mark.slow
def test_a_two_rank_checkpoint_resumes_in_one_process(two_rank_run, tmp_path, capsys, one_thread):
    runs = tmp_path / "runs"
    shutil.copytree(two_rank_run[0] / "runs", runs)
    assert main(["train", "--resume", "auto", "--outdir", str(runs), "--max_steps", "6", "--device", "cpu"]) == 0
    assert "global batch 16" in capsys.readouterr().out
    run_dir = runs / "00000-shapes"
    assert list(runs.iterdir()) == [run_dir]  # continued in place
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    # 4 batches of 2 ranks are the first 8 batches of one rank's epoch, plus the 2 new steps
    assert (state["step"], state["epoch"], state["batch"], state["world_size"]) == (6, 0, 10, 1)
    assert json.loads((run_dir / "config.json").read_text())["world_size"] == 1
    assert [json.loads(line)["step"] for line in (run_dir / "stats.jsonl").read_text().splitlines()] == [2, 4, 6]


@pytest.mark.slow
def test_both_ranks_resume_then_an_error_on_one_rank_stops_every_rank(two_rank_run, tmp_path):
    shutil.copytree(two_rank_run[0] / "runs", tmp_path / "runs")
    # Rank 1 fails on its 3rd step after resuming at step 4. torchrun polls its workers every second, not
    # every 0.1 s, so rank 0 surely reports before any teardown signal reaches it.
    code, out = _torchrun(tmp_path, "--fail", "1:2", *TRAIN_ARGS, "--max_steps", "10", "--resume", "auto",
                          "--outdir", str(tmp_path / "runs"), launcher=("--monitor-interval=1",))
    assert code != 0
    assert "steps 4 -> 10" in out and "ranks disagree" not in out
    stats = (tmp_path / "runs" / "00000-shapes" / "stats.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in stats] == [2, 4, 6]  # step 6 was averaged over both ranks
    assert "acgan train: error (rank 1 of 2): injected failure on rank 1" in out
    assert "acgan train: error (rank 0 of 2): lost contact with the other ranks" in out
    assert "Timed out" not in out  # rank 0 learnt of the failure from its peer at once, not from the timeout
    assert "[rank0]: Traceback" not in out and "[rank1]: Traceback" not in out


@pytest.mark.slow
def test_a_stalled_rank_times_out_after_acgan_dist_timeout(tmp_path):
    code, out = _torchrun(tmp_path, "--stall", "1:2", *TRAIN_ARGS, "--max_steps", "6",
                          "--outdir", str(tmp_path / "runs"), env={dist_utils.TIMEOUT_ENV: "10"})
    assert code != 0
    assert "exitcode  : -15" in out  # torchrun tore down the stalled rank once rank 0 gave up
    assert "acgan train: error (rank 0 of 2): lost contact with the other ranks (Timed out" in out
    assert f"{dist_utils.TIMEOUT_ENV}=10s" in out


def _ddp_step_grads(rank: int, world_size: int, init_file: str, inputs: dict, out_dir: str) -> None:
    """One rank of the D and G steps with G and D in DDP, on its slice of fixed inputs; saves the gradients."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        G, D = _nets(inputs)
        result = {"grads": _step_grads(DDP(G), DDP(D), G, D, inputs, rank, world_size)}
        try:
            dist_utils.check_agree(rank, "the rank", dist_utils.DistInfo(rank, world_size, rank))
        except UserError as e:
            result["disagree"] = str(e)
        torch.save(result, Path(out_dir) / f"grads{rank}.pt")
    finally:
        dist.destroy_process_group()


def _nets(inputs: dict) -> tuple[Generator, Discriminator]:
    """The paper's nets with the test's weights, in eval mode: BatchNorm on running stats, no dropout."""
    G, D = Generator(100, 10, 32), Discriminator(10, 32)
    G.load_state_dict(inputs["G"])
    D.load_state_dict(inputs["D"])
    return G.eval(), D.eval()


def _step_grads(G: torch.nn.Module, D: torch.nn.Module, G_raw: Generator, D_raw: Discriminator, inputs: dict,
                part: int, parts: int) -> dict[str, torch.Tensor]:
    """D's gradients of the D step and G's of the G step, taken as train_step takes them, on one slice."""
    n = inputs["y_real"].shape[0] // parts
    cut = {k: v[part * n:(part + 1) * n] for k, v in inputs.items() if k not in ("G", "D")}
    d_loss_real(*D(cut["x_real"]), cut["y_real"])[0].backward()
    x_fake = G(cut["z"], cut["y_fake"])
    d_loss_fake(*D(x_fake.detach()), cut["y_fake"])[0].backward()
    D_raw.requires_grad_(False)
    with D.no_sync() if hasattr(D, "no_sync") else contextlib.nullcontext():
        g_loss(*D(x_fake), cut["y_fake"])[0].backward()
    return {f"{net}.{k}": p.grad.clone() for net, m in (("D", D_raw), ("G", G_raw)) for k, p in m.named_parameters()}


@pytest.mark.slow
def test_two_ranks_of_batch_b_give_the_gradients_of_one_rank_of_batch_2b(tmp_path, one_thread):
    torch.manual_seed(0)
    B = 2  # any size will do with BatchNorm in eval mode; small keeps the backward passes cheap
    inputs = {"x_real": torch.rand(2 * B, 3, 32, 32) * 2 - 1, "y_real": torch.randint(0, 10, (2 * B,)),
              "z": torch.randn(2 * B, 100), "y_fake": torch.randint(0, 10, (2 * B,)),
              "G": Generator(100, 10, 32).state_dict(), "D": Discriminator(10, 32).state_dict()}
    full = _step_grads(*(_nets(inputs) * 2), inputs, 0, 1)
    half = _step_grads(*(_nets(inputs) * 2), inputs, 0, 2)
    assert not torch.allclose(half["D.fc_source.weight"], full["D.fc_source.weight"])  # the split does matter
    mp.spawn(_ddp_step_grads, args=(2, str(tmp_path / "store"), inputs, str(tmp_path)), nprocs=2)
    for rank in (0, 1):
        result = torch.load(tmp_path / f"grads{rank}.pt")
        assert result["grads"].keys() == full.keys()
        for name, grad in full.items():
            torch.testing.assert_close(result["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
        assert result["disagree"] == "ranks disagree on the rank (rank 0: 0, rank 1: 1)"


def test_ranks_share_one_permutation_per_epoch_in_disjoint_shards():
    n, batch = 100, 4
    data = ImageDataset(torch.zeros(n, 3, 2, 2, dtype=torch.uint8), torch.arange(n), tuple(map(str, range(n))))

    def seen(world: int, epoch: int, batches: int) -> list[torch.Tensor]:
        samplers = [EpochSampler(data, batch, device="cpu", seed=3, rank=r, world_size=world) for r in range(world)]
        return [torch.cat([y for _, y in list(s.epoch(epoch))[:batches]]) for s in samplers]

    ranks = seen(2, 0, 12)
    assert not set(ranks[0].tolist()) & set(ranks[1].tolist())  # each image on one rank only
    assert seen(2, 1, 12)[0].tolist() != ranks[0].tolist()  # a fresh permutation each epoch
    # b batches on 2 ranks are exactly the images of 2b batches on 1 rank: what reshard_position relies on
    assert set(torch.cat(seen(2, 0, 5)).tolist()) == set(seen(1, 0, 10)[0].tolist())
    assert set(torch.cat(seen(4, 0, 3)).tolist()) == set(torch.cat(seen(2, 0, 6)).tolist())


def test_reshard_position_keeps_the_images_seen():
    assert dist_utils.reshard_position(3, 7, 2, 2, 50) == (3, 7)
    assert dist_utils.reshard_position(3, 4, 2, 1, 100) == (3, 8)
    assert dist_utils.reshard_position(3, 9, 1, 4, 25) == (3, 2)  # a partial batch is seen again
    assert dist_utils.reshard_position(3, 99, 1, 4, 24) == (4, 0)  # past the smaller epoch's last batch


def test_timeout_comes_from_acgan_dist_timeout(monkeypatch):
    monkeypatch.delenv(dist_utils.TIMEOUT_ENV, raising=False)
    assert dist_utils.timeout_seconds() == dist_utils.DEFAULT_TIMEOUT_S
    monkeypatch.setenv(dist_utils.TIMEOUT_ENV, "42.5")
    assert dist_utils.timeout_seconds() == 42.5
    for bad in ("0", "-3", "soon"):
        monkeypatch.setenv(dist_utils.TIMEOUT_ENV, bad)
        with pytest.raises(UserError, match=dist_utils.TIMEOUT_ENV):
            dist_utils.timeout_seconds()


def test_single_process_needs_no_process_group(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    info = dist_utils.env_info()
    assert (info.rank, info.world_size, info.distributed) == (0, 1, False)
    assert dist_utils.rank_label() == ""
    with dist_utils.process_group(info, torch.device("cpu")):
        assert not dist.is_initialized()
        dist_utils.check_agree("anything", "a value", info)  # nothing to compare with
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert dist_utils.rank_label() == " (rank 1 of 4)"


def test_sync_bn_on_cpu_is_refused_in_one_line():
    config = TrainConfig(sync_bn=True, compile="off")
    with pytest.raises(UserError, match="--sync_bn needs CUDA"):
        build_trainer(config, 10, torch.device("cpu"), dist_utils.DistInfo(rank=0, world_size=2))
