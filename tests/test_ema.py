"""EMA of G's weights: the update rule on hand values, buffers copied, the warm-up schedule, a frozen copy."""

import math

import pytest
import torch
from torch import nn

from acgan.config import TrainConfig, config_from_dict, default_ema_warmup
from acgan.ema import ema_decay, make_ema, update_ema
from acgan.errors import UserError


def _linear(weight, bias):
    layer = nn.Linear(2, 1)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([weight]))
        layer.bias.copy_(torch.tensor([bias]))
    return layer


def test_update_moves_ema_a_tenth_of_the_way_with_decay_0_9():
    G_ema, G = _linear([1.0, -2.0], 0.5), _linear([3.0, 0.0], -0.5)
    update_ema(G_ema, G, 0.9)
    # 0.9 * ema + 0.1 * p: 0.9 * 1 + 0.1 * 3 = 1.2; 0.9 * -2 + 0 = -1.8; 0.9 * 0.5 + 0.1 * -0.5 = 0.4
    assert torch.allclose(G_ema.weight, torch.tensor([[1.2, -1.8]]))
    assert torch.allclose(G_ema.bias, torch.tensor([0.4]))
    assert torch.equal(G.weight, torch.tensor([[3.0, 0.0]]))  # G itself untouched


def test_decay_zero_copies_and_decay_one_keeps():
    G_ema, G = _linear([1.0, -2.0], 0.5), _linear([3.0, 7.0], -0.5)
    update_ema(G_ema, G, 1.0)
    assert torch.equal(G_ema.weight, torch.tensor([[1.0, -2.0]]))
    update_ema(G_ema, G, 0.0)
    assert torch.equal(G_ema.weight, G.weight) and torch.equal(G_ema.bias, G.bias)


def test_buffers_are_copied_not_averaged():
    G = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    G_ema = make_ema(G)
    G.train()
    G(torch.randn(16, 4) * 3 + 5)  # moves BN running stats
    update_ema(G_ema, G, 0.99)
    for (name, buf_ema), (_, buf) in zip(G_ema.named_buffers(), G.named_buffers(), strict=True):
        assert torch.equal(buf_ema, buf), name
    assert G_ema[1].num_batches_tracked.item() == 1


def test_spectral_norm_vectors_are_copied():
    G = nn.utils.parametrizations.spectral_norm(nn.Linear(3, 3))
    G_ema = make_ema(G)
    u = G.parametrizations.weight[0]._u
    u.neg_()  # as a power iteration in G's forward would move it, without depending on convergence
    assert not torch.equal(G_ema.parametrizations.weight[0]._u, u)
    update_ema(G_ema, G, 0.999)
    assert torch.equal(G_ema.parametrizations.weight[0]._u, u)


def test_make_ema_is_a_frozen_eval_copy():
    G = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    G_ema = make_ema(G)
    assert not G_ema.training and G.training
    assert all(not p.requires_grad for p in G_ema.parameters())
    assert all(p.requires_grad for p in G.parameters())
    assert G_ema[0].weight.data_ptr() != G[0].weight.data_ptr()
    update_ema(G_ema, G, 0.5)
    assert all(not p.requires_grad for p in G_ema.parameters())


@pytest.mark.skipif(torch.cuda.is_available(), reason="DataParallel refuses a CPU module where GPUs are visible")
def test_update_unwraps_a_data_parallel_wrapper():
    # DataParallel stands in for DDP (same .module convention, no process group needed on CPU)
    G = _linear([3.0, 0.0], -0.5)
    G_ema = make_ema(nn.DataParallel(G))
    assert isinstance(G_ema, nn.Linear)
    with torch.no_grad():
        G.weight.fill_(1.0)
    update_ema(G_ema, nn.DataParallel(G), 0.5)
    assert torch.allclose(G_ema.weight, torch.tensor([[2.0, 0.5]]))


def test_update_refuses_models_with_different_names():
    with pytest.raises(ValueError, match="differ by name"):
        update_ema(nn.Sequential(nn.Linear(2, 2)), nn.Linear(2, 2), 0.9)


def test_warmup_schedule():
    assert ema_decay(0, 0.999, 1000) == 0.0  # step 0: the EMA starts as a copy of G
    assert ema_decay(10_000, 0.999, 1000) == 0.999
    assert ema_decay(1000, 0.999, 1000) == 0.999
    assert ema_decay(0, 0.999, 0) == 0.999  # no warm-up: plain decay from the first step
    # halfway: horizon 1 + 0.5 * (1 / 0.01 - 1) = 50.5 steps, decay 1 - 1 / 50.5
    assert math.isclose(ema_decay(50, 0.99, 100), 1 - 1 / 50.5, rel_tol=1e-12)
    values = [ema_decay(step, 0.999, 100) for step in range(0, 150, 5)]
    assert values == sorted(values) and max(values) == 0.999


def test_warmup_rejects_decay_outside_unit_interval():
    with pytest.raises(ValueError, match="decay"):
        ema_decay(0, 1.5, 10)


class _Compiled(nn.Module):
    """Stands in for torch.compile's OptimizedModule (the original under ._orig_mod) without dynamo's import cost."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self._orig_mod = inner


def test_make_and_update_unwrap_a_compiled_module():
    G = _linear([3.0, 0.0], -0.5)
    G_ema = make_ema(_Compiled(G))
    assert isinstance(G_ema, nn.Linear)
    with torch.no_grad():
        G.weight.fill_(1.0)
    update_ema(G_ema, _Compiled(G), 0.0)
    assert torch.equal(G_ema.weight, G.weight)


@pytest.mark.parametrize("decay", [0.99, 0.999, 0.9999])
def test_default_warmup_keeps_the_half_life_within_five_percent_of_the_steps(decay):
    # NVlabs' ema_rampup 0.05: half-life (steps for a weight to fade to 1/2) = 5% of the steps taken, to within
    # a step (the ramp starts from a horizon of 1, not 0), until the decay reaches its target
    warmup = default_ema_warmup(decay)
    for step in (warmup // 10, warmup // 3, warmup - 1):
        half_life = math.log(0.5) / math.log(ema_decay(step, decay, warmup))
        assert math.isclose(half_life, 0.05 * step, rel_tol=0.01, abs_tol=1.0), (step, half_life)
    assert ema_decay(warmup, decay, warmup) == decay
    assert default_ema_warmup(0.0) == 0  # EMA off: nothing to ramp


def test_ema_warmup_default_resolves_per_decay_and_a_given_or_saved_one_wins():
    tuned = TrainConfig(recipe="tuned").resolved()
    assert tuned.ema_decay == 0.999 and tuned.ema_warmup == default_ema_warmup(0.999)
    assert TrainConfig(recipe="tuned", ema_warmup=0).resolved().ema_warmup == 0
    # a run saved before the ramp (fixed 1,000 steps) resumes with its own schedule
    assert config_from_dict({**tuned.to_dict(), "ema_warmup": 1000}).resolved().ema_warmup == 1000
    with pytest.raises(UserError, match="--ema_warmup"):
        TrainConfig(ema_warmup=-1)
