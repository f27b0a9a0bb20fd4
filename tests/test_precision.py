"""Precision: bf16 keeps fp32 master weights and losses; `auto` on a CPU is the fastest precision measured."""

import json

import pytest
import torch

from acgan.cli import main
from acgan.config import TrainConfig
from acgan.distributed import DistInfo
from acgan.precision import PROBE_FILE, autocast, choose_precision, resolve_precision, should_compile
from acgan.trainer import StepOptions, build_trainer, step_timer, train_step


def _one_step(precision):
    torch.manual_seed(0)
    tr = build_trainer(TrainConfig(arch="paper"), 10, torch.device("cpu"), DistInfo())
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    y = torch.arange(8) % 10
    stats = train_step(tr, x, y, StepOptions(100, 10), autocast(torch.device("cpu"), precision))
    return tr, stats


def test_bf16_step_keeps_fp32_weights_and_matches_fp32_losses():
    tr16, s16 = _one_step("bf16")
    tr32, s32 = _one_step("fp32")
    assert all(p.dtype == torch.float32 for p in (*tr16.G_raw.parameters(), *tr16.D_raw.parameters()))
    assert all(v.dtype == torch.float32 for v in s16.values())
    for key in ("loss_D_real", "loss_D_fake", "loss_G"):
        assert abs(s16[key].item() - s32[key].item()) < 0.05 * abs(s32[key].item()), key
    # both took an Adam step of the same size in the same direction
    w16, w32 = tr16.G_raw.fc.weight, tr32.G_raw.fc.weight
    cos = torch.nn.functional.cosine_similarity(w16.flatten(), w32.flatten(), dim=0)
    assert cos > 0.999


def test_precision_and_compile_resolution():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("auto", cpu) == "fp32"  # without measuring: auto on a CPU is measured in training
    assert not should_compile("auto", cpu) and should_compile("on", cpu) and not should_compile("off", cpu)


class FakeMachine:
    """Step and matmul times of an imaginary CPU, counting what the probe asked for."""

    def __init__(self, step: dict[str, float], matmul: dict[str, float]) -> None:
        self.step, self.matmul, self.steps_run = step, matmul, []

    def time_steps(self, precision: str, n: int) -> list[float]:
        self.steps_run += [precision] * n
        return [self.step[precision]] * n

    def screen(self, precision: str) -> float:
        return self.matmul[precision]


CPU = torch.device("cpu")


def test_auto_picks_the_fastest_measured_precision_and_remembers_it(tmp_path):
    machine = FakeMachine({"fp32": 0.30, "bf16": 0.20}, {"fp32": 1.0, "bf16": 0.6})
    choice, times, measured = choose_precision("auto", CPU, "key-a", tmp_path, machine.time_steps, machine.screen)
    assert (choice, measured) == ("bf16", True) and times == {"fp32": 0.30, "bf16": 0.20}
    assert json.loads((tmp_path / PROBE_FILE).read_text())["key-a"]["precision"] == "bf16"
    machine.steps_run.clear()
    again = choose_precision("auto", CPU, "key-a", tmp_path, machine.time_steps, machine.screen)
    assert again == ("bf16", times, False) and machine.steps_run == []  # the later run skips the probe
    # another CPU, thread count, torch, arch or batch is another key: measured afresh
    assert choose_precision("auto", CPU, "key-b", tmp_path, machine.time_steps, machine.screen)[2] is True


def test_a_precision_whose_kernels_are_hopeless_is_not_run_on_the_step(tmp_path):
    machine = FakeMachine({"fp32": 0.30, "bf16": 9.0}, {"fp32": 1.0, "bf16": 30.0})
    choice, times, _ = choose_precision("auto", CPU, "k", tmp_path, machine.time_steps, machine.screen)
    assert choice == "fp32" and "bf16" not in machine.steps_run
    assert times == {"fp32": 0.30, "bf16_matmul_vs_fp32": 30.0}


def test_an_explicit_precision_or_a_damaged_probe_file(tmp_path):
    machine = FakeMachine({"fp32": 0.30, "bf16": 0.20}, {"fp32": 1.0, "bf16": 0.6})
    assert choose_precision("fp32", CPU, "k", tmp_path, machine.time_steps, machine.screen) == ("fp32", {}, False)
    assert machine.steps_run == [] and not (tmp_path / PROBE_FILE).exists()
    (tmp_path / PROBE_FILE).write_text("{not json")
    assert choose_precision("auto", CPU, "k", tmp_path, machine.time_steps, machine.screen)[0] == "bf16"


def test_the_probe_leaves_the_random_stream_untouched():
    config = TrainConfig(dataset="shapes", batch_size=4).resolved()
    torch.manual_seed(7)
    before = torch.get_rng_state()
    step_timer(config, 10, CPU)("fp32", 2)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.slow
def test_a_run_with_auto_learns_exactly_what_a_run_with_its_choice_learns(tmp_path, monkeypatch):
    monkeypatch.setenv("ACGAN_CACHE", str(tmp_path / "cache"))
    flags = ["train", "--dataset", "shapes", "--batch_size", "8", "--max_steps", "3", "--log_every", "1",
             "--sample_every", "3", "--ckpt_every", "3"]
    assert main([*flags, "--outdir", str(tmp_path / "auto")]) == 0
    recorded = json.loads((tmp_path / "auto" / "00000-shapes" / "config.json").read_text())
    assert set(recorded["precision_seconds_per_step"]) >= {"fp32"}  # the probe's figures are in config.json
    chosen = recorded["resolved_precision"]
    assert main([*flags, "--precision", chosen, "--outdir", str(tmp_path / "fixed")]) == 0
    a = torch.load(tmp_path / "auto" / "00000-shapes" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "fixed" / "00000-shapes" / "checkpoints" / "last.pt", weights_only=True)
    for net in ("G", "D"):
        assert all(torch.equal(a[net][k], b[net][k]) for k in a[net]), net
