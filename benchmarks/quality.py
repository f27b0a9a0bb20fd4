"""Sample quality per wall-clock time: train for a fixed time, then score the run; prints one results-table row.

    python benchmarks/quality.py --root_dir ../shared/cifar10 --minutes 20 [--arch paper] [--detector PATH]
        [--no_cacc] [-- extra train flags]

1. Takes the cacc classifier given by --classifier, or trains one into --outdir (`acgan classifier train`);
   --no_cacc skips both.
2. Runs `acgan train` and stops it with SIGTERM after --minutes (a graceful stop: the last checkpoint is
   written at the step it reached), so every recipe gets the same wall-clock budget on the same machine.
   `--train_only` stops here; `--run_dir` scores such a run later (on a CPU the scoring of 10,000 images is
   about as long as the training).
3. Runs `acgan evaluate` on that checkpoint: cacc and MS-SSIM always; with --detector also FID, KID,
   precision/recall and intra-class FID, and IS when the detector has logits (the full NVlabs file, not the
   features-only copy). Prints the row for the README's results table and writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from acgan.config import EVAL_DEFAULTS, GENERATOR_WEIGHTS
from acgan.storage import unused_path


def _acgan(*args: str) -> list[str]:
    return [sys.executable, "-m", "acgan", *args]


def train_for(minutes: float, train_args: list[str]) -> float:
    """Run `acgan train` until it finishes or the time is up (then SIGTERM: it checkpoints and exits 0)."""
    start = time.perf_counter()
    proc = subprocess.Popen(_acgan("train", *train_args))
    try:
        proc.wait(timeout=minutes * 60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
    if proc.returncode != 0:
        sys.exit(f"acgan train failed with exit code {proc.returncode}")
    return time.perf_counter() - start


def _checkpoint_step(path: Path) -> int:
    """The step the graceful stop reached (stats.jsonl only has the logged steps)."""
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=True)["step"])


def _cpu_name() -> str:
    """'CPU (<model>, N cores)', the hardware column of a row."""
    from acgan.precision import cpu_name

    return f"CPU ({cpu_name()}, {os.cpu_count()} cores)"


def metrics_for(detector: str | None, cacc: bool = True) -> str:
    """What to measure: IS only with a detector that has logits (the features-only file has none)."""
    base = "cacc,msssim" if cacc else "msssim"
    if not detector:
        return base
    from acgan.metrics.detector import load_detector

    has_logits = load_detector(Path(detector)).kind == "full"
    return base + ",fid,kid,pr,ifid" + (",is" if has_logits else "")


TRAIN_TIME = "train-time.json"  # in the run dir: how long quality.py let it train, for a later --run_dir
ROW_METRICS = ("fid", "is_mean", "kid_mean", "precision", "recall", "ifid_mean", "cacc", "msssim_fake_mean")


def _earlier_run(run_dir: Path) -> tuple[Path, float]:
    """A run of an earlier --train_only and its training seconds (scored later, maybe on another day)."""
    if not (run_dir / TRAIN_TIME).is_file():
        sys.exit(f"{run_dir} has no {TRAIN_TIME}: --run_dir takes a run trained by quality.py --train_only")
    return run_dir, json.loads((run_dir / TRAIN_TIME).read_text())["seconds"]


def main() -> None:
    """Train, evaluate, print the row."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--root_dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "cifar10"))
    ap.add_argument("--arch", default="paper")
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--outdir", default="runs/quality")
    ap.add_argument("--num_samples", type=int, default=10_000)
    ap.add_argument("--detector", help="an Inception file (`acgan detector fetch`): adds FID, KID, pr, ifid (IS too "
                    "with the full NVlabs file)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--classifier", help="from `acgan classifier train` (default: train one into --outdir)")
    ap.add_argument("--no_cacc", action="store_true", help="skip cacc and its classifier (slow on CPUs)")
    ap.add_argument("--train_only", action="store_true", help="train, then stop before the (long) scoring")
    ap.add_argument("--run_dir", help="score this run of an earlier --train_only instead of training one")
    ap.add_argument("--weights", choices=GENERATOR_WEIGHTS, default=EVAL_DEFAULTS.weights,
                    help="score the run's EMA G or its raw G (rows and JSON of raw get a -raw suffix)")
    ap.add_argument("train_args", nargs="*", help="more `acgan train` flags, after --")
    a = ap.parse_args()
    data = ["--dataset", a.dataset, "--root_dir", a.root_dir]
    classifier = Path(a.classifier or Path(a.outdir) / f"classifier-{a.dataset}.pt")
    if a.run_dir:
        run_dir, seconds = _earlier_run(Path(a.run_dir))
    else:
        before = set(Path(a.outdir).glob("0*"))
        seconds = train_for(a.minutes, [*data, "--arch", a.arch, "--outdir", a.outdir, "--device", a.device,
                                        "--num_epochs", "100000", *a.train_args])
        (run_dir,) = set(Path(a.outdir).glob("0*")) - before
        (run_dir / TRAIN_TIME).write_text(json.dumps({"seconds": seconds, "cpu": _cpu_name()}) + "\n")
    if a.train_only:
        print(f"trained {run_dir} for {seconds / 60:.1f} min; score it with --run_dir {run_dir}")
        return
    if not a.no_cacc and not classifier.exists():
        subprocess.run(_acgan("classifier", "train", *data, "--device", a.device, "--out", str(classifier)),
                       check=True)
    metrics = metrics_for(a.detector, cacc=not a.no_cacc)
    suffix = "-raw" if a.weights == "raw" else ""
    # a new name when the run was scored before: reading back an earlier file would print its stale row
    out = unused_path(run_dir / "metrics" / f"quality{suffix}.json")
    cmd = _acgan("evaluate", "--checkpoint", str(run_dir / "checkpoints" / "last.pt"), "--metrics", metrics,
                 "--num_samples", str(a.num_samples), "--device", a.device, "--out", str(out),
                 "--weights", a.weights)
    cmd += ["--classifier", str(classifier)] if not a.no_cacc else []
    subprocess.run([*cmd, *(["--detector", a.detector] if a.detector else [])], check=True)
    results = json.loads(out.read_text())
    config = json.loads((run_dir / "config.json").read_text())
    step = _checkpoint_step(run_dir / "checkpoints" / "last.pt")
    recipe = (f"--recipe {config.get('recipe', 'default')}: "
              f"{config['loss']}+{config['cls_loss']}, d_dropout {config['d_dropout']}, ema {config['ema_decay']}, "
              f"diffaug {config['diffaug']}, "
              f"n_dis {config['n_dis']}, batch {config['batch_size']}, lr {config['lr_d']}/{config['lr_g']}")
    hardware = config["resolved_device"] if config["resolved_device"] != "cpu" else _cpu_name()
    recipe += ", raw G" if a.weights == "raw" else ""
    row = {"arch": config["arch"], "recipe": recipe, "steps": step, "hardware": hardware,
           "minutes": round(seconds / 60, 1), "num_samples": a.num_samples,
           **{k: results.get(k) for k in ROW_METRICS}, "cacc_real_test": results.get("cacc_real_test")}
    out.with_name(out.name.replace("quality", "quality-row", 1)).write_text(json.dumps(row, indent=2) + "\n")
    cells = [row["arch"], recipe, str(step), hardware, f"{row['minutes']} min",
             *(f"{row[k]:.4g}" if isinstance(row[k], float) else "not measured" for k in ROW_METRICS)]
    print("| " + " | ".join(["arch", "recipe", "steps", "hardware", "time", *ROW_METRICS]) + " |")
    print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
