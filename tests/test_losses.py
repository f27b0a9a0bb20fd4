"""Losses on hand-made logits, checked against the formulas written out by hand."""

import math

import torch

from acgan.losses import d_loss_fake, d_loss_real, g_loss


def _log_softmax_at(logits, y):
    return logits[y] - math.log(sum(math.exp(v) for v in logits))


def test_d_loss_real_is_bce_to_one_plus_cross_entropy():
    source = torch.tensor([2.0, -1.0])
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    y = torch.tensor([0, 1])
    loss, stats = d_loss_real(source, logits, y)
    bce = -(math.log(1 / (1 + math.exp(-2.0))) + math.log(1 / (1 + math.exp(1.0)))) / 2
    ce = -(_log_softmax_at([1.0, 0.0, -1.0], 0) + _log_softmax_at([0.5, 0.5, 3.0], 1)) / 2
    assert math.isclose(loss.item(), bce + ce, rel_tol=1e-6)
    assert math.isclose(stats["D_x"].item(), (1 / (1 + math.exp(-2)) + 1 / (1 + math.exp(1))) / 2, rel_tol=1e-6)
    assert stats["acc_real"].item() == 0.5  # first argmax 0 (right), second argmax 2 (wrong)


def test_d_loss_fake_targets_zero():
    source = torch.tensor([0.0, 3.0])
    logits = torch.zeros(2, 4)
    loss, stats = d_loss_fake(source, logits, torch.tensor([1, 2]))
    bce = -(math.log(0.5) + math.log(1 - 1 / (1 + math.exp(-3.0)))) / 2
    assert math.isclose(loss.item(), bce + math.log(4), rel_tol=1e-6)
    assert math.isclose(stats["D_G_z1"].item(), (0.5 + 1 / (1 + math.exp(-3))) / 2, rel_tol=1e-6)


def test_g_loss_is_non_saturating_and_conditional():
    logits = torch.tensor([[5.0, 0.0]])
    loss_right, _ = g_loss(torch.tensor([0.0]), logits, torch.tensor([0]))
    loss_wrong, _ = g_loss(torch.tensor([0.0]), logits, torch.tensor([1]))
    assert math.isclose(loss_right.item(), math.log(2) + -_log_softmax_at([5.0, 0.0], 0), rel_tol=1e-6)
    assert loss_wrong > loss_right  # the class term rewards G for the requested class
    # fooling D more (higher source logit) lowers G's loss, with a non-vanishing gradient when D wins
    src = torch.tensor([-8.0], requires_grad=True)
    g_loss(src, logits, torch.tensor([0]))[0].backward()
    assert src.grad.abs().item() > 0.9


def test_losses_are_fp32_for_bf16_logits():
    loss, _ = d_loss_real(torch.zeros(3, dtype=torch.bfloat16), torch.zeros(3, 5, dtype=torch.bfloat16),
                          torch.tensor([0, 1, 2]))
    assert loss.dtype == torch.float32
    assert math.isclose(loss.item(), math.log(2) + math.log(5), rel_tol=1e-6)
