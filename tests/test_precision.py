"""Precision: bf16 keeps fp32 master weights and losses; `auto` on a CPU is the fastest precision measured."""

import json

import pytest
import torch

from acgan.cli import main
from acgan.config import TrainConfig
from acgan.distributed import DistInfo
from acgan.precision import (
    PROBE_FILE,
    QUICK_ROWS,
    autocast,
    choose_precision,
    cpu_name,
    describe_choice,
    hopeless_precisions,
    measure_precisions,
    resolve_precision,
    should_compile,
)
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
    """Step and matmul times of an imaginary CPU, counting which precision and layout the probe ran."""

    def __init__(self, step: dict[str, float], matmul: dict[str, float]) -> None:
        self.step, self.matmul, self.steps_run = step, matmul, []

    def time_steps(self, label: str, n: int) -> list[float]:
        self.steps_run += [label] * n
        return [self.step[label]] * n

    def screen(self, precision: str, rows: int = 512, repeats: int = 3) -> float:
        return self.matmul[precision]


CPU = torch.device("cpu")
BF16_WINS = {"fp32 nchw": 0.30, "fp32 channels_last": 0.28, "bf16 nchw": 0.20, "bf16 channels_last": 0.25}


def test_auto_picks_the_fastest_measured_precision_and_layout_and_remembers_it(tmp_path):
    machine = FakeMachine(BF16_WINS, {"fp32": 1.0, "bf16": 0.6})
    choice = choose_precision("auto", CPU, "key-a", tmp_path, machine.time_steps, machine.screen)
    assert choice == ("bf16", "nchw", BF16_WINS, True)
    assert set(machine.steps_run) == set(BF16_WINS)  # every precision in every layout was timed
    record = json.loads((tmp_path / PROBE_FILE).read_text())["key-a"]
    assert (record["precision"], record["layout"]) == ("bf16", "nchw")
    machine.steps_run.clear()
    again = choose_precision("auto", CPU, "key-a", tmp_path, machine.time_steps, machine.screen)
    assert again == ("bf16", "nchw", BF16_WINS, False) and machine.steps_run == []  # later runs skip the probe
    # another CPU, thread count, torch, arch or batch is another key: measured afresh
    assert choose_precision("auto", CPU, "key-b", tmp_path, machine.time_steps, machine.screen)[3] is True


def test_a_pinned_precision_takes_the_layout_measured_for_it_and_never_probes(tmp_path):
    machine = FakeMachine(BF16_WINS, {"fp32": 1.0, "bf16": 0.6})
    assert choose_precision("fp32", CPU, "k", tmp_path, machine.time_steps, machine.screen) == \
        ("fp32", "nchw", {}, False)  # nothing measured for this key yet: the default layout, at once
    assert machine.steps_run == [] and not (tmp_path / PROBE_FILE).exists()
    choose_precision("auto", CPU, "k", tmp_path, machine.time_steps, machine.screen)
    # what auto measured serves a pinned precision too: fp32 was faster channels_last on this machine
    assert choose_precision("fp32", CPU, "k", tmp_path, machine.time_steps, machine.screen)[:2] == \
        ("fp32", "channels_last")
    assert choose_precision("bf16", torch.device("cuda"), "k", tmp_path, machine.time_steps, machine.screen) == \
        ("bf16", "nchw", {}, False)  # GPUs are not probed


def test_a_precision_whose_kernels_are_hopeless_is_not_run_on_the_step(tmp_path):
    step = {"fp32 nchw": 0.30, "fp32 channels_last": 0.24, "bf16 nchw": 9.0, "bf16 channels_last": 9.0}
    machine = FakeMachine(step, {"fp32": 1.0, "bf16": 30.0})
    precision, layout, times, _ = choose_precision("auto", CPU, "k", tmp_path, machine.time_steps, machine.screen)
    assert (precision, layout) == ("fp32", "channels_last")
    assert not any(label.startswith("bf16") for label in machine.steps_run)
    assert times == {"fp32 nchw": 0.30, "fp32 channels_last": 0.24, "bf16_matmul_vs_fp32": 30.0}
    line = describe_choice(precision, layout, times, True, tmp_path)
    assert "fp32, channels_last nets" in line and "bf16 left out (its matmul 30x slower)" in line


def _linear_screen(calls: list, per_row: dict[str, float], fixed: dict[str, float]):
    """Matmul seconds of an imaginary CPU: a cost per row of the matmul plus a fixed cost (casting the weights)."""
    def screen(precision: str, rows: int = 512, repeats: int = 3) -> float:
        calls.append((precision, rows))
        return per_row[precision] * rows + fixed.get(precision, 0.0)
    return screen


def test_an_emulated_precision_is_left_out_on_a_small_matmul_and_a_usable_one_gets_the_full_size():
    calls = []
    emulated = _linear_screen(calls, {"fp32": 1.0, "bf16": 60.0}, {})
    assert hopeless_precisions(("fp32", "bf16"), emulated) == {"bf16": 60.0}
    assert all(rows == QUICK_ROWS for _, rows in calls)  # emulated: the full-size matmul is never paid for
    calls.clear()
    # bf16 units whose weight cast costs as much as 200 rows: 7.25x slower on the small matmul, 1.39x at full size
    casting = _linear_screen(calls, {"fp32": 1.0, "bf16": 1.0}, {"bf16": 200.0})
    assert hopeless_precisions(("fp32", "bf16"), casting) == {}
    assert ("bf16", 512) in calls and ("fp32", 512) in calls


def test_the_probe_alternates_its_candidates():
    order = []
    measure_precisions(lambda label, n: order.extend([label] * n) or [0.1] * n, ("fp32",), steps=3,
                       screen=lambda p, **_: 1.0)
    # after one warm-up step each, one step of each in turn: a slow spell cannot land on one candidate only
    assert order == ["fp32 nchw", "fp32 channels_last"] * 4


def test_a_damaged_probe_file_is_measured_again(tmp_path):
    machine = FakeMachine(BF16_WINS, {"fp32": 1.0, "bf16": 0.6})
    (tmp_path / PROBE_FILE).write_text("{not json")
    assert choose_precision("auto", CPU, "k", tmp_path, machine.time_steps, machine.screen)[:2] == ("bf16", "nchw")
    (tmp_path / PROBE_FILE).write_text(json.dumps({"k": {"precision": "fp32", "seconds_per_step": {"fp32": 1}}}))
    assert choose_precision("auto", CPU, "k", tmp_path, machine.time_steps, machine.screen)[3] is True  # old format


def test_the_probe_leaves_the_random_stream_untouched():
    config = TrainConfig(dataset="shapes", batch_size=4).resolved()
    torch.manual_seed(7)
    before = torch.get_rng_state()
    step_timer(config, 10, CPU)("fp32 channels_last", 2)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.slow
def test_a_run_with_auto_learns_exactly_what_a_run_with_its_choice_learns(tmp_path, monkeypatch):
    monkeypatch.setenv("ACGAN_CACHE", str(tmp_path / "cache"))
    flags = ["train", "--dataset", "shapes", "--batch_size", "8", "--max_steps", "3", "--log_every", "1",
             "--sample_every", "3", "--ckpt_every", "3"]
    assert main([*flags, "--outdir", str(tmp_path / "auto")]) == 0
    recorded = json.loads((tmp_path / "auto" / "00000-shapes" / "config.json").read_text())
    assert set(recorded["precision_seconds_per_step"]) >= {"fp32 nchw", "fp32 channels_last"}  # the probe's figures
    chosen = recorded["resolved_precision"]
    assert recorded["resolved_layout"] in ("nchw", "channels_last")
    # the pinned run takes the layout auto measured faster for that precision, so it learns the same
    assert main([*flags, "--precision", chosen, "--outdir", str(tmp_path / "fixed")]) == 0
    fixed = json.loads((tmp_path / "fixed" / "00000-shapes" / "config.json").read_text())
    assert fixed["resolved_layout"] == recorded["resolved_layout"]
    a = torch.load(tmp_path / "auto" / "00000-shapes" / "checkpoints" / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "fixed" / "00000-shapes" / "checkpoints" / "last.pt", weights_only=True)
    for net in ("G", "D"):
        assert all(torch.equal(a[net][k], b[net][k]) for k in a[net]), net


def test_cpus_with_one_generic_name_are_told_apart(tmp_path):
    # VMs named "AMD EPYC" were a Zen 1, a Zen 3 and a Zen 5 on different days: a probe cached on one must not
    # be reused on another, so the name that keys the cache carries family and model
    def cpuinfo(family, model):
        path = tmp_path / f"cpuinfo-{family}-{model}"
        core = f"vendor_id\t: AuthenticAMD\ncpu family\t: {family}\nmodel\t\t: {model}\nmodel name\t: AMD EPYC\n"
        path.write_text(f"processor\t: 0\n{core}\nprocessor\t: 1\n{core}")
        return path

    zen1, zen5 = cpu_name(cpuinfo(23, 1)), cpu_name(cpuinfo(26, 2))
    assert zen1 == "AMD EPYC (cpu family 23, model 1)" and zen5 == "AMD EPYC (cpu family 26, model 2)"
    no_ids = tmp_path / "arm"
    no_ids.write_text("processor\t: 0\nmodel name\t: Some Core\n")
    assert cpu_name(no_ids) == "Some Core"
    assert cpu_name(tmp_path / "missing")  # no /proc: the platform module's answer, never an exception
