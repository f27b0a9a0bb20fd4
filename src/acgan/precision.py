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
HOPELESS = 2.0  # a precision whose matmuls run this many times slower than fp32's is not timed on the step
QUICK_ROWS = 32
QUICK_HOPELESS = 4 * HOPELESS  # the first look's bar: well clear of what casting costs on a small matmul
# What the probe times is acgan's own step: a record measured on an older step is not reused.
# 2: each precision is timed with NCHW and with channels_last nets. 3: the paper G's first layer is a matmul.
STEP_VERSION = 3
# The nets' memory layouts a CPU run may train in. oneDNN's CPU convolutions work in NHWC-like layouts and
# re-lay NCHW tensors out around every call, but whether channels_last wins depends on the CPU and the nets
# (benchmarks/README.md), so it is measured with the precision. A convolution follows its weights' layout:
# converting the nets is enough.
LAYOUTS = {"nchw": torch.contiguous_format, "channels_last": torch.channels_last}


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


def cpu_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name and, from /proc/cpuinfo, its family and model numbers; else what platform knows."""
    # Why the numbers: cloud VMs report generic names ("AMD EPYC", "Intel(R) Xeon(R) Processor") for CPUs as far
    # apart as Zen 1 and Zen 5, or Xeons with and without AMX, and a probe measured on one must not be reused on
    # another; family and model tell those generations apart.
    with contextlib.suppress(OSError):
        fields: dict[str, str] = {}
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
        if fields.get("model name"):
            ids = ", ".join(f"{k} {fields[k]}" for k in ("cpu family", "model") if fields.get(k))
            return f"{fields['model name']} ({ids})" if ids else fields["model name"]
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


def kernel_seconds(precision: str, rows: int = 512, repeats: int = 3) -> float:
    """Seconds of one matmul shaped like the paper D's largest conv (rows x 2304 by 2304 x 1600), in autocast."""
    gen = torch.Generator().manual_seed(0)  # a private stream: the run's own random draws stay as they were
    a, b = torch.randn(rows, 2304, generator=gen), torch.randn(2304, 1600, generator=gen)
    with autocast(torch.device("cpu"), precision):
        a @ b  # first call: kernel selection
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
    return (time.perf_counter() - start) / repeats


def fast_path(label: str) -> tuple[str, str]:
    """'bf16 channels_last' -> ('bf16', 'channels_last'); a bare precision means NCHW nets."""
    precision, _, layout = label.partition(" ")
    return precision, layout or "nchw"


def _timed(label: str) -> bool:
    """Whether a probe record's entry is a step time ('fp32 nchw'), not a screen's ratio ('bf16_matmul_vs_fp32')."""
    precision, _, layout = label.partition(" ")
    return precision in CPU_CANDIDATES and layout in LAYOUTS


def _fastest(times: Mapping[str, float], precisions: tuple[str, ...] = CPU_CANDIDATES) -> str | None:
    """The label of the fastest timed precision and layout among `precisions`, or None when none was timed."""
    timed = {k: t for k, t in times.items() if _timed(k) and fast_path(k)[0] in precisions}
    return min(timed, key=timed.__getitem__) if timed else None


def hopeless_precisions(candidates: tuple[str, ...] = CPU_CANDIDATES,
                        screen: Callable[..., float] = kernel_seconds) -> dict[str, float]:
    """The candidates whose matmuls run over 2x slower than fp32's, with that slowdown (never fp32 itself).

    A first look on a 32-row matmul settles the clear cases cheaply: where bf16 is emulated it is tens of times
    slower at any size, and there the full-size screen alone would cost more than the whole probe. Only a
    candidate within QUICK_HOPELESS of fp32 there is timed on the full size, where the fixed cost of casting the
    weights (relatively larger on a small matmul) no longer distorts the ratio.
    """
    others = [p for p in candidates if p != "fp32"]
    if not others:
        return {}
    quick_base = screen("fp32", rows=QUICK_ROWS, repeats=1)
    ratios = {p: screen(p, rows=QUICK_ROWS, repeats=1) / quick_base for p in others}
    unsure = [p for p, ratio in ratios.items() if ratio <= QUICK_HOPELESS]
    if unsure:
        base = screen("fp32")
        ratios.update({p: screen(p) / base for p in unsure})
    return {p: r for p, r in ratios.items() if r > HOPELESS}


def measure_precisions(time_steps: Callable[[str, int], list[float]], candidates: tuple[str, ...] = CPU_CANDIDATES,
                       steps: int = 4, screen: Callable[[str], float] = kernel_seconds) -> dict[str, float]:
    """Median seconds per training step of each candidate precision in each layout, by 'precision layout'.

    A precision whose matrix kernels run over 2x slower than fp32's (bf16 on a CPU without native bf16 runs
    ten or more times slower: one step would take longer than the whole probe) is left out after that quick
    screen; the others are timed on the run's own step.
    """
    hopeless = hopeless_precisions(candidates, screen)
    # not timed on the step: recorded as the screen's ratio
    times = {f"{precision}_matmul_vs_fp32": ratio for precision, ratio in hopeless.items()}
    labels = [f"{precision} {layout}" for precision in candidates if precision not in hopeless for layout in LAYOUTS]
    for label in labels:
        time_steps(label, 1)  # warm-up: oneDNN builds its kernels for this precision and layout
    samples: dict[str, list[float]] = {label: [] for label in labels}
    for _ in range(steps):  # one step of each in turn: a busy spell of a shared machine slows every candidate alike
        for label in labels:
            samples[label] += time_steps(label, 1)
    times.update({label: sorted(runs)[len(runs) // 2] for label, runs in samples.items()})
    return times


def choose_precision(requested: str, device: torch.device, key: str, cache_dir: Path,
                     time_steps: Callable[[str, int], list[float]],
                     screen: Callable[[str], float] = kernel_seconds) -> tuple[str, str, dict[str, float], bool]:
    """'auto' on a CPU: the fastest precision and layout, measured once per probe key and remembered in cache_dir.

    Returns the precision, the layout (a LAYOUTS name), the seconds per step of each candidate, and whether they
    were measured just now. `time_steps('fp32 channels_last', n)` runs n steps of the run's own nets and batch.
    A precision given explicitly takes the layout a probe of this key measured faster for it, else NCHW.
    """
    if device.type != "cpu":
        return resolve_precision(requested, device), "nchw", {}, False
    path = Path(cache_dir) / PROBE_FILE
    record = _read_probes(path).get(key)
    times = record.get("seconds_per_step") if isinstance(record, dict) else None
    known = dict(times) if isinstance(times, dict) and _fastest(times) is not None else None
    if requested != "auto":  # never probes: the user chose, and a pinned run starts at once
        label = _fastest(known or {}, (requested,))
        return requested, fast_path(label)[1] if label else "nchw", {}, False
    if known is not None:
        return (*fast_path(_fastest(known)), known, False)
    times = measure_precisions(time_steps, screen=screen)
    precision, layout = fast_path(_fastest(times))
    _remember(path, key, {"precision": precision, "layout": layout, "seconds_per_step": times,
                          "measured": time.strftime("%Y-%m-%d")})
    return precision, layout, times, True


def describe_choice(precision: str, layout: str, times: Mapping[str, float], measured: bool, cache_dir: Path) -> str:
    """One line: the choice and the figures behind it."""
    nets = "" if layout == "nchw" else f", {layout} nets"
    if not times:
        return f"precision {precision}{nets}"
    timed = sorted((t, k) for k, t in times.items() if _timed(k))
    skipped = [f"{k.split('_')[0]} left out (its matmul {v:.0f}x slower)" for k, v in times.items() if not _timed(k)]
    figures = ", ".join([f"{k} {t * 1000:.0f} ms/step" for t, k in timed] + skipped)
    how = f"measured on this {cpu_name()}" if measured else f"as measured before ({Path(cache_dir) / PROBE_FILE})"
    return f"precision auto -> {precision}{nets} ({figures}; {how})"


def should_compile(mode: str, device: torch.device) -> bool:
    """'auto' compiles on CUDA only: on CPU, torch.compile of these nets measured slower than eager."""
    return mode == "on" or (mode == "auto" and device.type == "cuda")


def maybe_compile(module: torch.nn.Module, mode: str, device: torch.device) -> torch.nn.Module:
    """The module wrapped by torch.compile when asked for (state_dict stays on the unwrapped module)."""
    return torch.compile(module) if should_compile(mode, device) else module
