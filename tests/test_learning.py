"""The learning test: short CPU runs on `shapes` must draw the class they are asked for, 80% of the time.

An independent classifier, trained here on real shapes (99.9% on the real test split), judges generated
images. A generator that ignores its class input is the control: the judge must find it at chance level,
which proves that the score is conditioning and not a judge that says yes to anything. A generator that draws
one image per class is the other failure: each run's images must vary within a class.

Why two runs, and the bar on their mean: one run is one draw from a spread wider than a few points. Each change
of floating-point order (CPU kind, thread count, kernels) makes another run of the same seed, and a single run
of the previous recipe scored 0.78 on one CPU and 0.83 on another. Two seeds trained side by side (one thread
each: on 2 cores, the time of one) estimate what the recipe draws with half the variance; each run on its own
must still pass the control and the variety check. docs/recipes.md has the runs behind every choice here.
"""

import contextlib
import copy
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from acgan.data import load_dataset
from acgan.generator import generate, load_generator

# The run: flags a user could type. `--recipe tuned` is the recommended recipe (--lr_d 0.001 --lr_g 0.0004
# --d_dropout 0 --diffaug color,translation,cutout --cls_loss ce_real, an EMA of G with NVlabs' warm-up): high
# learning rates get many updates out of a few CPU minutes, D has no dropout and sees DiffAugmented images, and its
# classifier learns from real images only. That classifier is then all G's class term answers to, and at the
# paper's weight of 1 it pulled G onto one image per class, the one D's classifier reads most surely: within
# 4,000 steps two seeds of four collapsed completely, and their scores became ten coin flips, one per class, that
# each classifier called its own way (0.60 by the judge and 0.99 by another net for the same images). Half that
# weight (--g_cls_weight 0.5) kept every class varied and the scores rising to the last step, so the last step is
# what is judged. The EMA's warm-up keeps its half-life within 5% of the steps taken; the old `--ema_warmup 0`
# still held 13% of the random initial weights at step 1000. The precision is pinned: with `auto` the probe times
# fp32 NCHW against fp32 channels_last (and bf16), and where two run within the noise of a shared VM the pick, and
# so the floating-point order and the whole run, changed from one start to the next on the same machine. Pinned
# fp32 with no probe cached (the suite's cache is empty) trains in NCHW, so on one machine it is one run.
STEPS = 4000
TRAIN_FLAGS = ["--dataset", "shapes", "--batch_size", "32", "--recipe", "tuned", "--g_cls_weight", "0.5",
               "--max_steps", str(STEPS), "--log_every", "100", "--sample_every", "500", "--ckpt_every", "1000",
               "--precision", "fp32"]
SEEDS = (0, 1)  # chosen before any of their scores were seen; `shapes` draws each seed's own train images
MIN_ACCURACY = 0.8  # the core issue's bar; chance is 0.1
# A G that draws one image per class can still score high: each classifier then reads ten images, not a thousand,
# and the score jumps by whole classes between checkpoints and between judges. Real shapes score 0.59.
MIN_VARIETY = 0.2
PER_CLASS = 100
JUDGE_STEPS = 1000


@contextlib.contextmanager
def _threads(num_threads: int) -> Iterator[None]:
    """torch's intra-op thread count set for a block, then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _judge(seed: int = 0) -> nn.Module:
    """A small CNN trained on real shapes: independent of D in architecture and training."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                        nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(128, 10))
    data = load_dataset("shapes", None, split="train", seed=seed)
    x, y = data.images.float() / 127.5 - 1, data.labels
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    # one-cycle: 99.9% on real test shapes; 600 steps at a constant 1e-3 gave 97.5% and misread one real
    # cross or star in ten, errors it then charged to G
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=JUDGE_STEPS)
    for _ in range(JUDGE_STEPS):
        idx = torch.randint(0, len(x), (128,))
        xb = torch.where(torch.rand(128, 1, 1, 1) < 0.5, x[idx].flip(3), x[idx])
        loss = F.cross_entropy(net(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    return net.eval()


@torch.no_grad()
def _accuracy(judge: nn.Module, images: torch.Tensor, y: torch.Tensor) -> float:
    return (judge(images.float() / 127.5 - 1).argmax(1) == y).float().mean().item()


def _within_class_std(images: torch.Tensor, y: torch.Tensor) -> float:
    """Pixel std across the images of each class, in [-1, 1] units, averaged over classes: 0 for a collapsed G."""
    x = images.float() / 127.5 - 1
    return sum(x[y == c].std(0).mean().item() for c in y.unique()) / len(y.unique())


def _start_run(seed: int, run_dir: Path) -> subprocess.Popen:
    """`acgan train` for one seed in its own one-thread process, as a user would start it; its log goes to a file."""
    run_dir.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(run_dir / "train.log", "w") as log:  # the child keeps its own handle; a pipe could fill and block it
        flags = [*TRAIN_FLAGS, "--seed", str(seed), "--outdir", str(run_dir)]
        return subprocess.Popen([sys.executable, "-m", "acgan", "train", *flags], env=env, stdout=log,
                                stderr=subprocess.STDOUT)


def _finish(proc: subprocess.Popen, run_dir: Path) -> Path:
    """Wait for a run; returns its checkpoints folder, or fails with the end of its log."""
    if proc.wait() != 0:
        pytest.fail(f"acgan train exited {proc.returncode}:\n{(run_dir / 'train.log').read_text()[-2000:]}")
    return run_dir / "00000-shapes" / "checkpoints"


@pytest.mark.slow
def test_generator_draws_the_requested_class(tmp_path):
    with _threads(1):  # the same judge however the test is started (the thread count changes its training)
        judge = _judge()
    test = load_dataset("shapes", None, split="test", seed=0)
    assert _accuracy(judge, test.images, test.labels) > 0.99  # the judge itself is competent
    assert _within_class_std(test.images, test.labels) > 0.5  # real shapes vary in colour, size and place

    # Both runs at once, one thread each: on 2 cores they take the time of one.
    procs = {seed: _start_run(seed, tmp_path / f"seed{seed}") for seed in SEEDS}
    y = torch.arange(10).repeat_interleave(PER_CLASS)
    scores = {}
    for seed, proc in procs.items():
        trained = load_generator(_finish(proc, tmp_path / f"seed{seed}") / "last.pt", torch.device("cpu"))
        G = trained.net
        assert trained.step == STEPS and len(trained.class_names) == 10
        z = torch.randn(len(y), G.nz, generator=torch.Generator().manual_seed(1))
        x_fake = generate(G, z, y)
        scores[seed] = _accuracy(judge, x_fake, y)
        variety = _within_class_std(x_fake, y)
        assert variety >= MIN_VARIETY, f"seed {seed}: G collapsed, within-class pixel std {variety:.2f}"

        # Control: the same G with its class input cut off draws the same image whatever the class.
        blind = copy.deepcopy(G)
        blind.fc.weight.data[:, G.nz:] = 0
        blind_acc = _accuracy(judge, generate(blind, z, y), y)
        assert blind_acc < 0.2, f"seed {seed}: a class-blind G scored {blind_acc:.0%}: the judge is not measuring " \
                                "conditioning"

    mean = sum(scores.values()) / len(scores)
    runs = ", ".join(f"seed {seed}: {acc:.1%}" for seed, acc in scores.items())
    assert mean >= MIN_ACCURACY, f"the judge recognised the requested class in only {mean:.1%} of generated " \
                                 f"images ({runs})"
