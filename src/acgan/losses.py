"""ACGAN objectives as pure functions of D's outputs: each returns the loss and a dict of detached statistics.

The paper: D maximizes L_S + L_C, G maximizes L_C - L_S, with
L_S = E[log P(S=real | x_real)] + E[log P(S=fake | x_fake)] and L_C = E[log P(C=c | x)] over real and
fake images. As losses to minimize: D takes BCE(source) + CE(class) on real and on fake images; G takes
the non-saturating BCE(source of fake | real) + CE(class of fake | requested class). Logits stay raw
(BCE-with-logits, CE on logits) and are computed in fp32 even when the nets run in bf16.

Options swap either half. Source loss "hinge" (Lim & Ye 2017; Miyato et al. 2018): D takes
relu(1 - s) on real and relu(1 + s) on fake, G takes -s. Class loss "ce_real": the same CE, but D learns
classes from real images only, as StudioGAN trains ACGAN. With the paper's "ce", D's classifier also
learns whatever class code G happens to draw, so G and D can agree on a code no classifier of real images
reads; measured on `shapes`, that is what keeps the paper's recipe from drawing recognisable classes
early. Class loss "d2dce" (Kang et al., NeurIPS 2021, ReACGAN): D's class head emits an embedding, scored
against per-class proxies with the Data-to-Data Cross-Entropy of `d2d_ce`, also on real images only for D.
G takes its class term on its fakes with every class loss, weighted by `g_cls_weight` (the paper's 1). With D's
classifier trained on real images only, that term alone rewards G for drawing, for each class, the one image the
classifier reads most surely, whatever z is; only the source term pays for variety. Measured on `shapes`, weight 1
let G collapse each class onto one image within 4,000 steps (within-class pixel std 0.03 against the data's 0.59)
and weight 0.5 kept it at 0.3-0.4 (docs/recipes.md).

The twin class losses pay G for the data's variety instead: D's class head has 2K outputs, K for "real image of
class c" and K for "generated image of class c", and G's class term is the log-ratio of the two, so the one image a
real-data classifier reads most surely earns G nothing once D has learned that G draws it. "tac" (Gong et al.,
NeurIPS 2019, TAC-GAN) reads the halves as two K-way classifiers, one of real and one of generated images; "adc"
(Hou et al., AAAI 2022, ADC-GAN) as one 2K-way classifier. With D optimal, G's class term then moves
p_G(x | y) towards p_data(x | y) rather than towards the mode of p_data(y | x).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from acgan.augment import diff_augment
from acgan.config import CLASS_LOSSES, SOURCE_LOSSES, TWIN_CLASS_LOSSES

Stats = dict[str, torch.Tensor]

# ReACGAN's settings (PyTorch-StudioGAN configs, e.g. CIFAR10/ReACGAN.yaml: temperature 0.5, m_p 0.98); the
# negative margin is 1 - m_p, as StudioGAN's Data2DataCrossEntropyLoss computes it (cos + m_p - 1).
D2DCE_TEMPERATURE = 0.5
D2DCE_POS_MARGIN = 0.98
D2DCE_NEG_MARGIN = 1.0 - D2DCE_POS_MARGIN


def _bce(logits: torch.Tensor, target: float) -> torch.Tensor:
    """Mean BCE of source logits against a constant real (1) or fake (0) target."""
    logits = logits.float()
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def _source_loss(source: torch.Tensor, loss: str, role: str) -> torch.Tensor:
    """Source term in fp32 for role "real" or "fake" (D's targets) or "gen" (G's non-saturating target)."""
    s = source.float()  # (B,)
    if loss == "bce":
        return _bce(s, 0.0 if role == "fake" else 1.0)
    if loss == "hinge":
        if role == "real":
            return F.relu(1.0 - s).mean()
        if role == "fake":
            return F.relu(1.0 + s).mean()
        return -s.mean()
    raise ValueError(f"unknown source loss {loss!r}; expected one of {SOURCE_LOSSES}")


def _cosine_to_proxies(embed: torch.Tensor, proxies: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every embedding to every class proxy, in fp32."""
    if embed.dim() != 2 or proxies.dim() != 2 or embed.shape[1] != proxies.shape[1]:
        raise ValueError(f"d2dce needs embeddings (B, E) and proxies (K, E); got {tuple(embed.shape)} and "
                         f"{tuple(proxies.shape)}")
    e = F.normalize(embed.float(), dim=1)  # (B, E)
    v = F.normalize(proxies.float(), dim=1)  # (K, E)
    return e @ v.T  # (B, K)


def d2d_ce(embed: torch.Tensor, proxies: torch.Tensor, y: torch.Tensor, *, temperature: float = D2DCE_TEMPERATURE,
           m_p: float = D2DCE_POS_MARGIN, m_n: float = D2DCE_NEG_MARGIN) -> torch.Tensor:
    """ReACGAN's Data-to-Data Cross-Entropy of embeddings (B, E) against class proxies (K, E), in fp32."""
    # With f_i, v_c unit vectors and N_i = {j : y_j != y_i} (same-class samples are not negatives):
    #   l_i = -log( exp(min(f_i.v_{y_i} - m_p, 0) / T)
    #               / (exp(min(f_i.v_{y_i} - m_p, 0) / T) + sum_{j in N_i} exp(max(f_i.f_j - m_n, 0) / T)) )
    # The margins stop pulling a sample once it is within m_p of its proxy and stop pushing pairs that are
    # already nearly orthogonal, which is what keeps D's class gradients bounded (the paper's point).
    e = F.normalize(embed.float(), dim=1)  # (B, E)
    pos = _cosine_to_proxies(embed, proxies).gather(1, y[:, None])  # (B, 1)
    pos = torch.clamp(pos - m_p, max=0.0) / temperature  # (B, 1)
    neg = torch.clamp(e @ e.T - m_n, min=0.0) / temperature  # (B, B)
    neg = neg.masked_fill(y[:, None] == y[None, :], float("-inf"))  # drop self and same-class pairs
    # logsumexp over [positive, negatives] is the exact denominator, stable without a max trick
    return (torch.logsumexp(torch.cat([pos, neg], dim=1), dim=1) - pos[:, 0]).mean()


def _class_loss(class_out: torch.Tensor, y: torch.Tensor, proxies: torch.Tensor | None) -> torch.Tensor:
    """CE on class logits, or D2D-CE on an embedding when proxies are given."""
    if proxies is None:
        return F.cross_entropy(class_out.float(), y)
    return d2d_ce(class_out, proxies, y)


def _halves(class_out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A twin head's 2K logits (B, 2K) -> the real-class half (B, K) and the generated-class half (B, K), fp32."""
    logits = class_out.float()
    K = logits.shape[1] // 2
    return logits[:, :K], logits[:, K:]


def _twin_real(class_out: torch.Tensor, y: torch.Tensor, cls_loss: str) -> torch.Tensor:
    """D's twin class term on real images: "real image of class y"."""
    if cls_loss == "adc":  # one 2K-way softmax; real class y is output y
        return F.cross_entropy(class_out.float(), y)
    return F.cross_entropy(_halves(class_out)[0], y)  # tac: the real-data classifier alone


def _twin_fake(class_out: torch.Tensor, y: torch.Tensor, cls_loss: str) -> torch.Tensor:
    """D's twin class term on G's images: "generated image of class y"."""
    if cls_loss == "adc":  # generated class y is output K + y of the same softmax
        return F.cross_entropy(class_out.float(), y + class_out.shape[1] // 2)
    return F.cross_entropy(_halves(class_out)[1], y)  # tac: the twin classifier of generated images


def _twin_g(class_out: torch.Tensor, y: torch.Tensor, cls_loss: str) -> torch.Tensor:
    """G's twin class term: -log p(real, y | x) + log p(generated, y | x), the log-ratio D's two readings give."""
    return _twin_real(class_out, y, cls_loss) - _twin_fake(class_out, y, cls_loss)


def _accuracy(class_out: torch.Tensor, y: torch.Tensor, proxies: torch.Tensor | None = None,
              twin: bool = False) -> torch.Tensor:
    """Fraction of images whose arg-max class (logit, real-class half of a twin head, or nearest proxy) is y."""
    class_out = class_out.detach()
    if twin:
        class_out = _halves(class_out)[0]
    scores = class_out if proxies is None else _cosine_to_proxies(class_out, proxies.detach())  # (B, K)
    return (scores.argmax(dim=1) == y).float().mean()


def d_loss_real(source: torch.Tensor, class_out: torch.Tensor, y: torch.Tensor, *, loss: str = "bce",
                cls_loss: str = "ce", proxies: torch.Tensor | None = None) -> tuple[torch.Tensor, Stats]:
    """D's loss on real images: source(real) + class(true class): CE, D2D-CE, or a twin head's real half."""
    twin = cls_loss in TWIN_CLASS_LOSSES
    cls = _twin_real(class_out, y, cls_loss) if twin else _class_loss(class_out, y, proxies)
    total = _source_loss(source, loss, "real") + cls
    stats = {
        "loss_D_real": total.detach(),
        "D_x": torch.sigmoid(source.detach().float()).mean(),
        "acc_real": _accuracy(class_out, y, proxies, twin),
    }
    return total, stats


def d_loss_fake(source: torch.Tensor, class_out: torch.Tensor, y: torch.Tensor, *, loss: str = "bce",
                cls_loss: str = "ce", proxies: torch.Tensor | None = None) -> tuple[torch.Tensor, Stats]:
    """D's loss on fakes: source(fake), plus the paper's CE(class | generated-for class) or a twin head's fake half."""
    if cls_loss not in CLASS_LOSSES:
        raise ValueError(f"unknown class loss {cls_loss!r}; expected one of {CLASS_LOSSES}")
    total = _source_loss(source, loss, "fake")
    twin = cls_loss in TWIN_CLASS_LOSSES
    if cls_loss == "ce":  # the ACGAN paper's objective; ce_real and d2dce train D's classifier on real data only
        total = total + F.cross_entropy(class_out.float(), y)
    elif twin:  # D learns what G draws for class y as its own class, apart from the real class y
        total = total + _twin_fake(class_out, y, cls_loss)
    stats = {
        "loss_D_fake": total.detach(),
        "D_G_z1": torch.sigmoid(source.detach().float()).mean(),
        "acc_fake": _accuracy(class_out, y, proxies, twin),
    }
    return total, stats


def g_loss(source: torch.Tensor, class_out: torch.Tensor, y: torch.Tensor, *, loss: str = "bce",
           cls_loss: str = "ce", proxies: torch.Tensor | None = None,
           cls_weight: float = 1.0) -> tuple[torch.Tensor, Stats]:
    """G's loss: non-saturating source(fake | real) + cls_weight * class term (CE, D2D-CE, or a twin log-ratio)."""
    cls = _twin_g(class_out, y, cls_loss) if cls_loss in TWIN_CLASS_LOSSES else _class_loss(class_out, y, proxies)
    total = _source_loss(source, loss, "gen") + cls_weight * cls
    stats = {"loss_G": total.detach(), "D_G_z2": torch.sigmoid(source.detach().float()).mean()}
    return total, stats


@dataclass(frozen=True, eq=False)
class Objective:
    """One run's ACGAN objective, chosen once: the step calls it without knowing which losses it holds.

    `proxies` is D's own parameter of class proxies, bound here for d2dce (None otherwise), so the optimizer's
    in-place updates and checkpoint loads reach it; `augment` is the parsed DiffAugment policy that every
    image D sees goes through, real and generated alike; `g_cls_weight` weighs G's class term.
    """

    source_loss: str = "bce"
    cls_loss: str = "ce"
    augment: tuple[str, ...] = ()
    proxies: torch.Tensor | None = None
    g_cls_weight: float = 1.0

    @property
    def d_learns_classes_from_fakes(self) -> bool:
        """True for the paper's `ce`: D's classifier also learns the class G was asked for from G's images."""
        return self.cls_loss == "ce"

    def view(self, x: torch.Tensor) -> torch.Tensor:
        """What D looks at: the images themselves, or their DiffAugment."""
        return diff_augment(x, self.augment) if self.augment else x

    def d_real(self, source: torch.Tensor, class_out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Stats]:
        """D's loss and statistics on real images."""
        return d_loss_real(source, class_out, y, loss=self.source_loss, cls_loss=self.cls_loss, proxies=self.proxies)

    def d_fake(self, source: torch.Tensor, class_out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Stats]:
        """D's loss and statistics on G's images."""
        return d_loss_fake(source, class_out, y, loss=self.source_loss, cls_loss=self.cls_loss, proxies=self.proxies)

    def g(self, source: torch.Tensor, class_out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, Stats]:
        """G's loss and statistics on its own images."""
        return g_loss(source, class_out, y, loss=self.source_loss, cls_loss=self.cls_loss, proxies=self.proxies,
                      cls_weight=self.g_cls_weight)
