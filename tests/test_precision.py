"""The fast path keeps fp32 master weights and fp32 losses, and agrees with fp32 to bf16 accuracy."""

import torch

from acgan.config import TrainConfig
from acgan.distributed import DistInfo
from acgan.precision import autocast, resolve_precision, should_compile
from acgan.trainer import StepOptions, build_trainer, train_step


def _one_step(precision):
    torch.manual_seed(0)
    tr = build_trainer(TrainConfig(arch="paper"), 10, torch.device("cpu"), DistInfo())
    x = torch.rand(8, 3, 32, 32) * 2 - 1
    y = torch.arange(8) % 10
    stats = train_step(tr, x, y, StepOptions(100, 10), autocast(torch.device("cpu"), precision))
    return tr, stats


def test_bf16_step_keeps_fp32_weights_and_matches_fp32_losses():
    tr16, s16 = _one_step("bf16")
    tr32, s32 = _one_step("fp32")
    assert all(p.dtype == torch.float32 for p in (*tr16.G_raw.parameters(), *tr16.D_raw.parameters()))
    assert all(v.dtype == torch.float32 for v in s16.values())
    for key in ("loss_D_real", "loss_D_fake", "loss_G"):
        assert abs(s16[key].item() - s32[key].item()) < 0.05 * abs(s32[key].item()), key
    # both took an Adam step of the same size in the same direction
    w16, w32 = tr16.G_raw.fc.weight, tr32.G_raw.fc.weight
    cos = torch.nn.functional.cosine_similarity(w16.flatten(), w32.flatten(), dim=0)
    assert cos > 0.999


def test_precision_and_compile_resolution():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("auto", cpu) in ("fp32", "bf16")
    assert not should_compile("auto", cpu) and should_compile("on", cpu) and not should_compile("off", cpu)
