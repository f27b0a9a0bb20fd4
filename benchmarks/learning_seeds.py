"""The learning test's run for other seeds: train on `shapes`, judge every checkpoint, print one row per seed.

    python benchmarks/learning_seeds.py --seeds 0 1 2 3 4 [--steps 4000] [--outdir runs/learning] [-- extra flags]

Each seed is trained in its own process with the flags of tests/test_learning.py (one thread, as the test runs
each of its two seeds; flags after `--` are appended and win), checkpointed every --every steps, and every
checkpoint's EMA G is scored by the test's own judge (the same CNN, trained the same way) on 1,000 images, with
the within-class pixel std the test checks for collapse. The last step's score is that seed's score in the test,
which trains seeds 0 and 1 and sets its bar on their mean. Two processes at a time use both cores of a 2-core
machine without oversubscribing it (one thread each). This is how the rows of docs/recipes.md were measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def train_seed(seed: int, steps: int, every: int, outdir: Path, extra: list[str]) -> Path:
    """Run the test's `acgan train` for one seed in a one-thread subprocess; returns its checkpoints folder."""
    from test_learning import TRAIN_FLAGS

    run_root = outdir / f"seed{seed}"
    flags = [*TRAIN_FLAGS, "--seed", str(seed), "--max_steps", str(steps), "--ckpt_every", str(every),
             "--keep_ckpts", str(steps // every + 1), "--outdir", str(run_root), *extra]
    # one thread, as the test gives each run, and the benchmark's own cache (no user files)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ACGAN_CACHE": str(outdir / "cache")}
    subprocess.run([sys.executable, "-m", "acgan", "train", *flags], env=env, check=True, stdout=subprocess.DEVNULL)
    return run_root / "00000-shapes" / "checkpoints"


@torch.no_grad()
def judge_checkpoint(path: Path, judge: torch.nn.Module) -> tuple[int, float, list[float], float]:
    """(step, judge accuracy on the test's 100 images per class, per-class accuracies, within-class std)."""
    from test_learning import PER_CLASS, _within_class_std

    from acgan.generator import generate, load_generator

    trained = load_generator(path, torch.device("cpu"))
    G = trained.net
    y = torch.arange(10).repeat_interleave(PER_CLASS)
    z = torch.randn(len(y), G.nz, generator=torch.Generator().manual_seed(1))  # the test's noise
    x_fake = generate(G, z, y)
    pred = judge(x_fake.float() / 127.5 - 1).argmax(1)
    per_class = [(pred[y == c] == c).float().mean().item() for c in range(10)]
    return trained.step, sum(per_class) / 10, per_class, _within_class_std(x_fake, y)


def main() -> None:
    """Train the seeds two at a time, then judge them and print a row per seed (and JSON lines with --json)."""
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--every", type=int, default=500, help="checkpoint (and judge) every this many steps")
    p.add_argument("--outdir", type=Path, default=Path("runs/learning_seeds"))
    p.add_argument("--parallel", type=int, default=2, help="one-thread runs at a time (the number of cores)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.outdir.exists():
        sys.exit(f"{args.outdir} exists: choose a new --outdir (runs are never overwritten)")
    sys.path.insert(0, str(ROOT / "tests"))  # the test's flags and judge, imported rather than copied
    with ThreadPoolExecutor(args.parallel) as pool:
        dirs = list(pool.map(lambda s: train_seed(s, args.steps, args.every, args.outdir, extra), args.seeds))

    from test_learning import _judge

    torch.set_num_threads(1)  # the judge the test trains on one thread: another thread count, another judge
    judge = _judge()
    for seed, ckpt_dir in zip(args.seeds, dirs, strict=True):
        rows = [judge_checkpoint(path, judge) for path in sorted(ckpt_dir.glob("ckpt-*.pt"))]
        step, acc, per_class, variety = rows[-1]
        weakest = min(range(10), key=per_class.__getitem__)
        trajectory = ", ".join(f"{s}: {a:.3f} (std {v:.2f})" for s, a, _, v in rows)
        print(f"seed {seed}: {trajectory}; the test's score, step {step}: {acc:.3f}, within-class std {variety:.2f} "
              f"(weakest class {weakest}: {per_class[weakest]:.2f})")
        if args.json:
            print(json.dumps({"seed": seed, "extra": extra, "scores": {s: a for s, a, _, _ in rows},
                              "variety": {s: v for s, _, _, v in rows}, "final_per_class": per_class}))


if __name__ == "__main__":
    main()
