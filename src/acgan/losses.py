"""ACGAN objectives as pure functions of logits: each returns the loss and a dict of detached statistics.

The paper: D maximizes L_S + L_C, G maximizes L_C - L_S, with
L_S = E[log P(S=real | x_real)] + E[log P(S=fake | x_fake)] and L_C = E[log P(C=c | x)] over real and
fake images. As losses to minimize: D takes BCE(source) + CE(class) on real and on fake images; G takes
the non-saturating BCE(source of fake | real) + CE(class of fake | requested class). Logits stay raw
(BCE-with-logits, CE on logits) and are computed in fp32 even when the nets run in bf16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Stats = dict[str, torch.Tensor]


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Mean BCE of source logits against a constant real (1) or fake (0) target."""
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def _accuracy(class_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction of images whose arg-max class is y."""
    return (class_logits.argmax(dim=1) == y).float().mean()


def d_loss_real(source: torch.Tensor, class_logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Stats]:
    """D's loss on real images: BCE(source | real) + CE(class | true class)."""
    loss_s = _bce(source, 1.0)
    loss_c = F.cross_entropy(class_logits.float(), y)
    stats = {
        "loss_D_real": (loss_s + loss_c).detach(),
        "D_x": torch.sigmoid(source.detach().float()).mean(),
        "acc_real": _accuracy(class_logits.detach(), y),
    }
    return loss_s + loss_c, stats


def d_loss_fake(source: torch.Tensor, class_logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Stats]:
    """D's loss on generated images: BCE(source | fake) + CE(class | the class they were generated for)."""
    loss_s = _bce(source, 0.0)
    loss_c = F.cross_entropy(class_logits.float(), y)
    stats = {
        "loss_D_fake": (loss_s + loss_c).detach(),
        "D_G_z1": torch.sigmoid(source.detach().float()).mean(),
        "acc_fake": _accuracy(class_logits.detach(), y),
    }
    return loss_s + loss_c, stats


def g_loss(source: torch.Tensor, class_logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Stats]:
    """G's loss: BCE(source of fake | real) + CE(class of fake | requested class)."""
    loss = _bce(source, 1.0) + F.cross_entropy(class_logits.float(), y)
    stats = {"loss_G": loss.detach(), "D_G_z2": torch.sigmoid(source.detach().float()).mean()}
    return loss, stats
