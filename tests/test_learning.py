"""The learning test: a short CPU run on `shapes` must draw the class it is asked for, 80% of the time.

An independent classifier, trained here on real shapes (99.9% on the real test split), judges generated
images. A generator that ignores its class input is the control: the judge must find it at chance level,
which proves that the score is conditioning and not a judge that says yes to anything.

What is judged is the checkpoint a user keeps: the run measures cacc (acgan's own classifier of real shapes,
not the judge) every 250 steps and keeps best.pt by it. Why not the last step: one run is one draw from a
spread wider than the bar's margin. On one thread of a Zen 5 the last step of 3000 scored 0.65-0.85 over five
seeds (some seeds peak and fall back, G fooling D's classifier), and on a Zen 1 (fp32) the test's own run
learned slower and scored 0.77 at step 3000, still rising. 4000 steps with the best checkpoint kept covers
both kinds of run; cacc and the judge agreed within 0.07 at every checkpoint measured, so
the choice is not luck.
docs/recipes.md has the runs: how the recipe was found, the seeds, and the trajectories.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from acgan.cli import main
from acgan.data import load_dataset
from acgan.generator import generate, load_generator

# The run: flags a user could type. `--recipe tuned` is this recipe (--lr_d 0.001 --lr_g 0.0004 --d_dropout 0
# --diffaug color,translation,cutout --cls_loss ce_real): high learning rates get many updates out of five CPU
# minutes, G learns slower than D so it does not collapse each class onto one image, D has no dropout and sees
# DiffAugmented images, and its classifier learns from real images only. A small batch and an EMA of G over
# about the last 500 steps suit a run of a few thousand steps; everything else (the default arch's nets, BCE,
# Adam betas) is the default. The precision is pinned: with `auto` the probe times fp32 NCHW against fp32
# channels_last (and bf16), and where two run within the noise of a shared VM (fp32's two layouts on an AVX2
# CPU) the pick, and so the floating-point order and the whole run, changed from one run to the next on the
# same machine. Pinned fp32 with no probe cached (the suite's cache is empty) trains in NCHW, so on one machine
# it is the same run every time.
STEPS = 4000
TRAIN_FLAGS = ["--dataset", "shapes", "--batch_size", "32", "--recipe", "tuned", "--ema_decay", "0.998",
               "--ema_warmup", "0", "--max_steps", str(STEPS),
               "--log_every", "100", "--sample_every", "500", "--ckpt_every", "1000", "--seed", "0",
               "--precision", "fp32"]
MIN_ACCURACY = 0.8  # the core issue's bar; chance is 0.1
# The checkpoint the run keeps: every EVAL_EVERY steps the run measures cacc with acgan's own classifier of real
# shapes and keeps best.pt by it, as a user keeps the best checkpoint of a run. That classifier (a ResNet-style
# net, `acgan classifier train`) is not the judge: the judge never sees the checkpoints it does not score.
EVAL_EVERY = 250
SELECT_FLAGS = ["--eval_every", str(EVAL_EVERY), "--eval_metrics", "cacc", "--eval_samples", "1000"]
CLASSIFIER_FLAGS = ["--dataset", "shapes", "--epochs", "1", "--width", "8", "--device", "cpu"]  # 1.0 on real test
PER_CLASS = 100
JUDGE_STEPS = 1000


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


@pytest.mark.slow
def test_generator_draws_the_requested_class(tmp_path):
    judge = _judge()
    test = load_dataset("shapes", None, split="test", seed=0)
    assert _accuracy(judge, test.images, test.labels) > 0.99  # the judge itself is competent

    assert main(["classifier", "train", *CLASSIFIER_FLAGS]) == 0  # into the suite's private $ACGAN_CACHE
    assert main(["train", *TRAIN_FLAGS, *SELECT_FLAGS, "--outdir", str(tmp_path)]) == 0
    checkpoints = tmp_path / "00000-shapes" / "checkpoints"
    assert load_generator(checkpoints / "last.pt", torch.device("cpu")).step == STEPS
    trained = load_generator(checkpoints / "best.pt", torch.device("cpu"))
    G = trained.net
    assert trained.step % EVAL_EVERY == 0 and len(trained.class_names) == 10
    y = torch.arange(10).repeat_interleave(PER_CLASS)
    z = torch.randn(len(y), G.nz, generator=torch.Generator().manual_seed(1))
    acc = _accuracy(judge, generate(G, z, y), y)
    assert acc >= MIN_ACCURACY, f"the judge recognised the requested class in only {acc:.0%} of generated images"

    # Control: the same G with its class input cut off draws the same image whatever the class.
    blind = copy.deepcopy(G)
    blind.fc.weight.data[:, G.nz:] = 0
    blind_acc = _accuracy(judge, generate(blind, z, y), y)
    assert blind_acc < 0.2, f"a class-blind G scored {blind_acc:.0%}: the judge is not measuring conditioning"
