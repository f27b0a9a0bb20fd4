"""The learning test's run for other seeds: train on `shapes`, judge every checkpoint, print one row per seed.

    python benchmarks/learning_seeds.py --seeds 0 1 2 3 4 [--steps 4000] [--outdir runs/learning] [-- extra flags]

Each seed is trained in its own process with the flags of tests/test_learning.py (one thread, as the suite
runs that test; flags after `--` are appended and win), checkpointed every --every steps, and every checkpoint's
EMA G is scored by the test's own judge (the same CNN, trained the same way) on 1,000 images. Like the test,
each run measures cacc every 250 steps with a small classifier of real shapes (trained first, into
<outdir>/cache) and keeps best.pt by it; the judge's score of best.pt is the test's verdict for that seed.
Two processes at a time use both cores of a 2-core machine without oversubscribing it (one thread each).
This is how the rows of docs/recipes.md were measured.
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
    from test_learning import SELECT_FLAGS, TRAIN_FLAGS

    run_root = outdir / f"seed{seed}"
    flags = [*TRAIN_FLAGS, *SELECT_FLAGS, "--seed", str(seed), "--max_steps", str(steps), "--ckpt_every", str(every),
             "--keep_ckpts", str(steps // every + 1), "--outdir", str(run_root), *extra]
    env = _one_thread_env(outdir)
    subprocess.run([sys.executable, "-m", "acgan", "train", *flags], env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return run_root / "00000-shapes" / "checkpoints"


def _one_thread_env(outdir: Path) -> dict[str, str]:
    """One thread, as the suite gives the test, and the benchmark's own cache (its classifier, no user files)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ACGAN_CACHE": str(outdir / "cache")}


def train_classifier(outdir: Path) -> None:
    """The test's cacc classifier, which picks each run's best.pt (`acgan classifier train`, one thread)."""
    from test_learning import CLASSIFIER_FLAGS

    subprocess.run([sys.executable, "-m", "acgan", "classifier", "train", *CLASSIFIER_FLAGS],
                   env=_one_thread_env(outdir), check=True, stdout=subprocess.DEVNULL)


@torch.no_grad()
def judge_checkpoint(path: Path, judge: torch.nn.Module) -> tuple[int, float, list[float]]:
    """(step, judge accuracy on the test's 100 images per class, per-class accuracies) of one checkpoint."""
    from acgan.generator import generate, load_generator

    trained = load_generator(path, torch.device("cpu"))
    G = trained.net
    y = torch.arange(10).repeat_interleave(100)
    z = torch.randn(len(y), G.nz, generator=torch.Generator().manual_seed(1))  # the test's noise
    pred = judge(generate(G, z, y).float() / 127.5 - 1).argmax(1)
    per_class = [(pred[y == c] == c).float().mean().item() for c in range(10)]
    return trained.step, sum(per_class) / 10, per_class


def scores(ckpt_dir: Path, judge: torch.nn.Module) -> dict[int, tuple[float, list[float]]]:
    """Step -> (judge accuracy on 100 images per class, per-class accuracies) for every numbered checkpoint."""
    out = {}
    for path in sorted(ckpt_dir.glob("ckpt-*.pt")):
        step, acc, per_class = judge_checkpoint(path, judge)
        out[step] = (acc, per_class)
    return out


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
    train_classifier(args.outdir)
    with ThreadPoolExecutor(args.parallel) as pool:
        dirs = list(pool.map(lambda s: train_seed(s, args.steps, args.every, args.outdir, extra), args.seeds))

    from test_learning import _judge

    torch.set_num_threads(1)  # the judge the test trains on its one thread: another thread count, another judge
    judge = _judge()
    for seed, ckpt_dir in zip(args.seeds, dirs, strict=True):
        result = scores(ckpt_dir, judge)
        per_class = result[max(result)][1]
        weakest = min(range(10), key=per_class.__getitem__)
        trajectory = ", ".join(f"{step}: {acc:.3f}" for step, (acc, _) in result.items())
        best_step, best_acc, _ = judge_checkpoint(ckpt_dir / "best.pt", judge)
        print(f"seed {seed}: {trajectory} (weakest class at the end: {weakest}, {per_class[weakest]:.2f}); "
              f"best.pt (kept by cacc) is step {best_step}: {best_acc:.3f}, the test's verdict")
        if args.json:
            print(json.dumps({"seed": seed, "extra": extra, "scores": {s: a for s, (a, _) in result.items()},
                              "final_per_class": per_class, "best_step": best_step, "best_score": best_acc}))


if __name__ == "__main__":
    main()
