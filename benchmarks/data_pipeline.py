"""Datasets larger than memory: prepare speed, and training from a prepared memory map against the in-RAM path.

    python benchmarks/data_pipeline.py --work_dir /tmp/acgan-data            # 200,000 64x64 JPEGs, as the issue sets
    python benchmarks/data_pipeline.py --work_dir /tmp/small --num_images 20000 --steps 20

1. Writes a folder of --num_images JPEGs (--num_classes class folders) once; later runs reuse it.
2. Times `acgan prepare` on it (a fresh output each time) and prints images/s.
3. Trains the paper's nets at --image_size for --steps steps twice, from the folder decoded into RAM and held
   there (--stream off: the path every dataset took before `acgan prepare`) and from the prepared directory
   (--stream auto, which streams it on a machine where it is over the resident budget), and
   prints each one's images/s (the mean of stats.jsonl rows after the first) and peak RSS.
4. Trains from the prepared directory under `torchrun --nproc_per_node 2` and prints the two ranks' peak RSS and
   their peak PSS (a page two processes share counts half in each, so the sum counts shared pages once).
Run it on an idle machine; it prints one line per figure and writes them as JSON into --work_dir.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np


def _write_images(job: tuple[Path, int, int, int, int]) -> None:
    """One class folder of smooth random JPEGs (photo-like sizes: a few KB each, not noise)."""
    folder, label, count, size, seed = job
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        coarse = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
        image += rng.normal(0, 6, image.shape)
        Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / f"{label:04d}_{i:06d}.jpg", quality=90)


def make_folder(root: Path, num_images: int, num_classes: int, size: int) -> None:
    """root/<class>/*.jpg with num_images images in all, unless a finished one is there."""
    done = root / ".complete"
    if done.is_file() and done.read_text() == f"{num_images} {num_classes} {size}":
        return
    shutil.rmtree(root, ignore_errors=True)
    per_class = [num_images // num_classes + (c < num_images % num_classes) for c in range(num_classes)]
    start = time.perf_counter()
    with Pool(os.cpu_count()) as pool:
        pool.map(_write_images, [(root / f"class_{c:03d}", c, n, size, c) for c, n in enumerate(per_class)])
    done.write_text(f"{num_images} {num_classes} {size}")
    print(f"wrote {num_images:,} JPEGs in {time.perf_counter() - start:.0f} s")


def _children(pid: int) -> list[int]:
    """Every descendant of pid."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, parent in parents.items() if parent in frontier]
        found += kids
        frontier = kids
    return found


def _memory_kb(pid: int) -> tuple[int, int]:
    """(peak RSS, current PSS) of a process in KB; zeros once it is gone."""
    try:
        status = (Path("/proc") / str(pid) / "status").read_text()
        rollup = (Path("/proc") / str(pid) / "smaps_rollup").read_text()
    except OSError:
        return 0, 0
    hwm = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
    pss = next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), 0)
    return hwm, pss


def run_measured(cmd: list[str], log: Path, python_only: bool = True) -> tuple[float, dict[int, tuple[int, int]]]:
    """Run cmd; return its wall time and, per process (it and its children), peak RSS and peak PSS in KB."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        peaks: dict[int, tuple[int, int]] = {}
        while proc.poll() is None:
            for pid in (proc.pid, *_children(proc.pid)):
                hwm, pss = _memory_kb(pid)
                old = peaks.get(pid, (0, 0))
                peaks[pid] = (max(old[0], hwm), max(old[1], pss))
            time.sleep(0.2)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return time.perf_counter() - start, peaks


def images_per_s(run_parent: Path) -> float:
    """Mean images/s of a run's stats rows after the first (which holds the warm-up)."""
    (run_dir,) = run_parent.glob("0*")
    rows = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    rates = [r["images_per_s"] for r in rows if "images_per_s" in r][1:]
    return float(np.mean(rates))


def main() -> None:
    """Build the folder, then measure prepare, the two training paths and two ranks."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work_dir", type=Path, required=True)
    ap.add_argument("--num_images", type=int, default=200_000)
    ap.add_argument("--num_classes", type=int, default=100)
    ap.add_argument("--image_size", type=int, default=64)
    ap.add_argument("--batch_size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--skip_torchrun", action="store_true")
    a = ap.parse_args()
    work, acgan = a.work_dir, [sys.executable, "-m", "acgan"]
    folder, prepared = work / "jpegs", work / "prepared"
    make_folder(folder, a.num_images, a.num_classes, a.image_size)
    shutil.rmtree(prepared, ignore_errors=True)
    seconds, peaks = run_measured([*acgan, "prepare", "--root_dir", str(folder), "--image_size", str(a.image_size),
                                   "--out", str(prepared), "--num_workers", "2"], work / "prepare.log")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    result = {"cpu": f"{cpu}, {os.cpu_count()} cores", "num_images": a.num_images, "image_size": a.image_size,
              "prepare_s": round(seconds, 1), "prepare_images_per_s": round(a.num_images / seconds)}
    print(f"prepare: {a.num_images:,} images in {seconds:.1f} s = {a.num_images / seconds:,.0f} images/s "
          f"(wall, listing and hashing included; {cpu}, {os.cpu_count()} cores)")
    train = ["train", "--image_size", str(a.image_size), "--batch_size", str(a.batch_size), "--max_steps",
             str(a.steps), "--log_every", "5", "--sample_every", "100000", "--ckpt_every", "100000",
             "--num_workers", "2"]
    # in RAM: today's path for data that fits, the whole uint8 dataset held by the process (--stream off)
    for name, data in (("in_ram", ["--dataset", "folder", "--root_dir", str(folder), "--stream", "off"]),
                       ("prepared", ["--dataset", "prepared", "--root_dir", str(prepared)])):
        runs = work / f"runs-{name}"
        shutil.rmtree(runs, ignore_errors=True)
        seconds, peaks = run_measured([*acgan, *train, *data, "--outdir", str(runs)], work / f"train-{name}.log")
        rss = max(hwm for hwm, _ in peaks.values()) / 1e6
        result[f"{name}_images_per_s"], result[f"{name}_peak_rss_gb"] = round(images_per_s(runs), 1), round(rss, 3)
        print(f"train from {name}: {result[f'{name}_images_per_s']} images/s, peak RSS {rss:.2f} GB "
              f"({seconds:.0f} s in all)")
    print(f"prepared / in-RAM images/s: {result['prepared_images_per_s'] / result['in_ram_images_per_s']:.3f}")
    if not a.skip_torchrun:
        runs = work / "runs-torchrun"
        shutil.rmtree(runs, ignore_errors=True)
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
                    "acgan", *train, "--dataset", "prepared", "--root_dir", str(prepared), "--outdir", str(runs)]
        _, peaks = run_measured(torchrun, work / "train-torchrun.log")
        ranks = sorted(peaks.items(), key=lambda kv: -kv[1][0])[:2]  # the two workers: the launcher is small
        rss_sum, pss_sum = sum(h for _, (h, _) in ranks) / 1e6, sum(p for _, (_, p) in ranks) / 1e6
        result.update(torchrun_rank_peak_rss_gb=[round(h / 1e6, 3) for _, (h, _) in ranks],
                      torchrun_peak_pss_sum_gb=round(pss_sum, 3))
        print(f"torchrun, 2 ranks: peak RSS {' + '.join(f'{h / 1e6:.2f}' for _, (h, _) in ranks)} = {rss_sum:.2f} GB, "
              f"peak PSS summed {pss_sum:.2f} GB; one process alone: {result['prepared_peak_rss_gb']:.2f} GB")
    (work / "data_pipeline.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
