"""The learning test: a short CPU run on `shapes` must draw the class it is asked for, 80% of the time.

An independent classifier, trained here on real shapes (99.9% on the real test split), judges generated
images. A generator that ignores its class input is the control: the judge must find it at chance level,
which proves that the score is conditioning and not a judge that says yes to anything.

How the recipe was found (paper nets, batch 32, EMA G, one run each; docs/recipes.md's "What to expect on
`shapes`" has every row): the paper's own recipe scores 0.48 (G and D agree on a class code no classifier
of real images reads); D's classifier on real images only (--cls_loss ce_real), no dropout in D (its
classifier then reads real shapes after ~250 steps instead of ~1250) and DiffAugment make it learn the
shapes themselves; G slower than D keeps each class from collapsing onto one image; doubling both rates
(--lr_d 1e-3 --lr_g 4e-4) and a 500-step EMA horizon (0.998) give, at step 3000 on one thread of an AMD EPYC
(Zen 5, the thread count the suite gives this test): 0.819 for this test's run (seed 0); seeds 1-4 gave 0.837,
0.650, 0.756 and 0.853. So this run clears the bar, but by less than the recipe's spread over seeds (0.65-0.92
in docs/recipes.md's shapes table): another CPU, precision or thread count makes another run, which may land under
it. docs/recipes.md has what was tried to widen the margin (nothing tried did, within this test's budget).
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
# about the last 500 steps suit a 3000-step run; everything else (the default arch's nets, BCE, Adam betas,
# bf16 where available) is the default.
STEPS = 3000
TRAIN_FLAGS = ["--dataset", "shapes", "--batch_size", "32", "--recipe", "tuned", "--ema_decay", "0.998",
               "--ema_warmup", "0", "--max_steps", str(STEPS),
               "--log_every", "100", "--sample_every", "500", "--ckpt_every", "1000", "--seed", "0"]
MIN_ACCURACY = 0.8  # the core issue's bar; chance is 0.1
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

    assert main(["train", *TRAIN_FLAGS, "--outdir", str(tmp_path)]) == 0
    trained = load_generator(tmp_path / "00000-shapes" / "checkpoints" / "last.pt", torch.device("cpu"))
    G = trained.net
    assert trained.step == STEPS and len(trained.class_names) == 10
    y = torch.arange(10).repeat_interleave(PER_CLASS)
    z = torch.randn(len(y), G.nz, generator=torch.Generator().manual_seed(1))
    acc = _accuracy(judge, generate(G, z, y), y)
    assert acc >= MIN_ACCURACY, f"the judge recognised the requested class in only {acc:.0%} of generated images"

    # Control: the same G with its class input cut off draws the same image whatever the class.
    blind = copy.deepcopy(G)
    blind.fc.weight.data[:, G.nz:] = 0
    blind_acc = _accuracy(judge, generate(blind, z, y), y)
    assert blind_acc < 0.2, f"a class-blind G scored {blind_acc:.0%}: the judge is not measuring conditioning"
