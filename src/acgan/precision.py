"""The fast-path switches: which precision the nets run in (on CPUs chosen by measuring), and autocast for it."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

CPU_CANDIDATES = ("fp32", "bf16")
PROBE_FILE = "precision.json"
# What the probe times is acgan's own step: a record measured on an older step is not reused.
# 2: the nets run channels_last on CPUs.
STEP_VERSION = 2


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for the nets' forward passes; master weights and losses stay fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_precision(precision: str, device: torch.device) -> str:
    """A precision without measuring: 'auto' -> fp32 (measured faster on GPUs; CPUs use `choose_precision`)."""
    # On an H100 these small nets are bound by kernel launches, not arithmetic: autocast's extra cast kernels
    # made every arch slower there (docs/performance.md).
    return "fp32" if precision == "auto" else precision


def cpu_name() -> str:
    """The CPU's model name (as /proc/cpuinfo gives it), else what the platform module knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def probe_key(**run: Any) -> str:
    """What a measured choice depends on: this CPU, its thread count, torch, acgan's step, the run's nets and batch."""
    parts = {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
             "step_version": STEP_VERSION, **run}
    return json.dumps(parts, sort_keys=True)


def _read_probes(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # no file yet, or a damaged one: measuring again is always safe
    return found if isinstance(found, dict) else {}


def _remember(path: Path, key: str, record: Mapping[str, Any]) -> None:
    """Add one record to the probe file atomically; a read-only cache only costs a probe next time."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        merged = {**_read_probes(path), key: dict(record)}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(merged, f, indent=1, sort_keys=True)
        os.replace(tmp, path)


def kernel_seconds(precision: str, repeats: int = 3) -> float:
    """Seconds of one matmul shaped like the paper D's largest conv (512 x 2304 by 2304 x 1600), in autocast."""
    gen = torch.Generator().manual_seed(0)  # a private stream: the run's own random draws stay as they were
    a, b = torch.randn(512, 2304, generator=gen), torch.randn(2304, 1600, generator=gen)
    with autocast(torch.device("cpu"), precision):
        a @ b  # first call: kernel selection
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
    return (time.perf_counter() - start) / repeats


def measure_precisions(time_steps: Callable[[str, int], list[float]], candidates: tuple[str, ...] = CPU_CANDIDATES,
                       steps: int = 4, screen: Callable[[str], float] = kernel_seconds) -> dict[str, float]:
    """Median seconds per training step of each candidate that is not hopeless (see below), by name.

    A candidate whose matrix kernels run over 2x slower than fp32's (bf16 on a CPU without native bf16 runs
    ten or more times slower: one step would take longer than the whole probe) is left out after that quick
    screen; the others are timed on the run's own step.
    """
    base = screen("fp32")
    times: dict[str, float] = {}
    for precision in candidates:
        if precision != "fp32" and (ratio := screen(precision) / base) > 2:
            times[f"{precision}_matmul_vs_fp32"] = ratio  # not timed on the step: recorded as the screen's ratio
            continue
        time_steps(precision, 1)  # warm-up: oneDNN builds its kernels for this precision
        samples = sorted(time_steps(precision, steps))
        times[precision] = samples[len(samples) // 2]
    return times


def choose_precision(requested: str, device: torch.device, key: str, cache_dir: Path,
                     time_steps: Callable[[str, int], list[float]],
                     screen: Callable[[str], float] = kernel_seconds) -> tuple[str, dict[str, float], bool]:
    """'auto' on a CPU: the fastest candidate, measured once per probe key and remembered in cache_dir.

    Returns the precision, the seconds per step of each candidate, and whether they were measured just now.
    `time_steps(precision, n)` runs n steps of the run's own nets and batch and returns their seconds.
    """
    if requested != "auto" or device.type != "cpu":
        return resolve_precision(requested, device), {}, False
    path = Path(cache_dir) / PROBE_FILE
    record = _read_probes(path).get(key)
    if isinstance(record, dict) and record.get("precision") in CPU_CANDIDATES:
        return record["precision"], dict(record.get("seconds_per_step", {})), False
    times = measure_precisions(time_steps, screen=screen)
    choice = min((p for p in times if p in CPU_CANDIDATES), key=times.__getitem__)
    _remember(path, key, {"precision": choice, "seconds_per_step": times, "measured": time.strftime("%Y-%m-%d")})
    return choice, times, True


def describe_choice(precision: str, times: Mapping[str, float], measured: bool, cache_dir: Path) -> str:
    """One line: the choice and the figures behind it."""
    if not times:
        return f"precision {precision}"
    timed = sorted((t, p) for p, t in times.items() if p in CPU_CANDIDATES)
    skipped = [f"{k.split('_')[0]} left out (its matmul {v:.0f}x slower)"
               for k, v in times.items() if k not in CPU_CANDIDATES]
    figures = ", ".join([f"{p} {t * 1000:.0f} ms/step" for t, p in timed] + skipped)
    how = f"measured on this {cpu_name()}" if measured else f"as measured before ({Path(cache_dir) / PROBE_FILE})"
    return f"precision auto -> {precision} ({figures}; {how})"


def memory_format_for(device: torch.device) -> torch.memory_format:
    """The nets' weight layout: channels_last on CPUs, the default (contiguous NCHW) elsewhere."""
    # oneDNN's CPU convolutions work in NHWC-like layouts: NCHW weights and activations are re-laid-out around
    # every call, forward and backward (benchmarks/README.md has the measured step times). Convolutions follow
    # their weights' layout, so converting the nets is enough; inputs need no conversion. On GPUs the nets
    # stay as they were measured (docs/performance.md).
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def should_compile(mode: str, device: torch.device) -> bool:
    """'auto' compiles on CUDA only: on CPU, torch.compile of these nets measured slower than eager."""
    return mode == "on" or (mode == "auto" and device.type == "cuda")


def maybe_compile(module: torch.nn.Module, mode: str, device: torch.device) -> torch.nn.Module:
    """The module wrapped by torch.compile when asked for (state_dict stays on the unwrapped module)."""
    return torch.compile(module) if should_compile(mode, device) else module
