"""The learning test: a short CPU run on `shapes` must draw the class it is asked for.

An independent classifier, trained here on real shapes, judges generated images. A generator that
ignores its class input is the control: the judge must find it at chance level, which proves that the
score is conditioning and not a judge that says yes to anything.

Target vs. what the paper's nets reach: the issue asks for >= 80% within a few CPU minutes. Measured on
this 2-core CPU with the paper's nets at batch 32, judged by this test's judge (one run each):
- the paper's recipe, 2000 steps: 0.48; G and D agree on a class code no classifier of real images reads;
- D's classifier on real images only (--cls_loss ce_real) and an EMA G (0.99), lr 5e-4, 2000 steps: 0.61
  to 0.68, limited by intra-class collapse (each class drawn as one image for every z);
- plus --d_dropout 0 (D's classifier reads real shapes after ~250 steps instead of ~1250) and DiffAugment
  (color,translation,cutout), lr 5e-4: 0.88 (seed 0) and 0.65 (seed 1) at step 2000, but seed 1 then
  collapses completely (within-class pixel std 0.39 -> 0.03) and falls to 0.55 by step 3000;
- the same with G slower than D (--lr_g 2e-4 --lr_d 5e-4), 3000 steps (about 5 CPU minutes): seed 1 rises
  steadily, 0.33, 0.42, 0.52, 0.60, 0.69, 0.83 at steps 500..3000, with no collapse; this test's run
  (seed 0, 2 threads) 0.45, 0.54, 0.70 at steps 1000, 2000, 3000, within-class pixel std still 0.34.
That last recipe is the one below. 0.70 and 0.83 are not a reliable 80% in CI, so the assertion stays well
below the measured figures (MIN_ACCURACY, five times chance); the 80% bar is still open.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from acgan.cli import main
from acgan.data import load_dataset
from acgan.sample import generate, load_generator

# The run: flags a user could type. A small batch and a high D learning rate get many updates out of a few
# CPU minutes, and G learns slower than D so it does not collapse each class onto one image; D has no
# dropout and sees DiffAugmented images, its classifier learns from real images only, and samples come
# from a short-horizon EMA of G; everything else (the default arch's nets, BCE, Adam betas, bf16 where
# available) is the default.
TRAIN_FLAGS = ["--dataset", "shapes", "--batch_size", "32", "--lr_d", "0.0005", "--lr_g", "0.0002",
               "--max_steps", "3000", "--d_dropout", "0", "--diffaug", "color,translation,cutout",
               "--cls_loss", "ce_real", "--ema_decay", "0.99", "--ema_warmup", "0",
               "--log_every", "100", "--sample_every", "500", "--ckpt_every", "1000", "--seed", "0"]
MIN_ACCURACY = 0.5  # chance is 0.1; measured 0.70 and 0.83
PER_CLASS = 100


def _judge(seed: int = 0) -> nn.Module:
    """A small CNN trained on real shapes: independent of D in architecture and training."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
                        nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(128, 10))
    data = load_dataset("shapes", None, split="train", seed=seed)
    x, y = data.images.float() / 127.5 - 1, data.labels
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(600):
        idx = torch.randint(0, len(x), (128,))
        xb = torch.where(torch.rand(128, 1, 1, 1) < 0.5, x[idx].flip(3), x[idx])
        loss = F.cross_entropy(net(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def _accuracy(judge: nn.Module, images: torch.Tensor, y: torch.Tensor) -> float:
    return (judge(images.float() / 127.5 - 1).argmax(1) == y).float().mean().item()


@pytest.mark.slow
def test_generator_draws_the_requested_class(tmp_path):
    judge = _judge()
    test = load_dataset("shapes", None, split="test", seed=0)
    assert _accuracy(judge, test.images, test.labels) > 0.95  # the judge itself is competent

    assert main(["train", *TRAIN_FLAGS, "--outdir", str(tmp_path)]) == 0
    G, class_names, _, step = load_generator(tmp_path / "00000-shapes" / "checkpoints" / "last.pt",
                                             torch.device("cpu"))
    assert step == 3000 and len(class_names) == 10
    y = torch.arange(10).repeat_interleave(PER_CLASS)
    z = torch.randn(len(y), G.nz, generator=torch.Generator().manual_seed(1))
    acc = _accuracy(judge, generate(G, z, y), y)
    assert acc >= MIN_ACCURACY, f"the judge recognised the requested class in only {acc:.0%} of generated images"

    # Control: the same G with its class input cut off draws the same image whatever the class.
    blind = copy.deepcopy(G)
    blind.fc.weight.data[:, G.nz:] = 0
    blind_acc = _accuracy(judge, generate(blind, z, y), y)
    assert blind_acc < 0.2, f"a class-blind G scored {blind_acc:.0%}: the judge is not measuring conditioning"
