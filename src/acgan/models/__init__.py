"""The networks: build_nets(arch, ...) -> (G, D) for every architecture; G(z, y) -> x, D(x) -> (source, class).

Each D's class output is class logits (B, K), or with embed_dim an embedding (B, E) to compare with its
class proxies D.proxies (K, E) (ReACGAN's data-to-data cross-entropy).
"""

from __future__ import annotations

from types import ModuleType

from torch import nn

from acgan.config import ARCH_SPECS, ARCHS, D2D_EMBED_DIM, TWIN_CLASS_LOSSES, TrainConfig
from acgan.errors import UserError
from acgan.models import imagenet, paper, resnet, sndcgan
from acgan.models.layers import BitDropout, CondBatchNorm2d, count_parameters, init_weights
from acgan.models.paper import SUPPORTED_SIZES, Discriminator, Generator

__all__ = [
    "ARCHS",
    "SUPPORTED_SIZES",
    "BitDropout",
    "CondBatchNorm2d",
    "Discriminator",
    "Generator",
    "build_generator",
    "build_nets",
    "count_parameters",
    "generator_for",
    "init_weights",
    "nets_for",
]


def _name(arch: str) -> str:
    if arch not in ARCHS:
        raise UserError(f"--arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    return arch


def _module(arch: str) -> ModuleType:
    """The module that defines --arch's Generator and Discriminator."""
    _name(arch)
    return {"paper": paper, "sndcgan": sndcgan, "resnet": resnet, "imagenet": imagenet}[arch]


def build_generator(arch: str, nz: int, num_classes: int, image_size: int, *, cond_bn: bool = True) -> nn.Module:
    """An initialised G alone (sampling needs no D); cond_bn only applies to sndcgan and resnet."""
    if ARCH_SPECS[_name(arch)].one_hot_g:  # the paper's nets always concatenate the one-hot class to z
        return _module(arch).Generator(nz, num_classes, image_size)
    return _module(arch).Generator(nz, num_classes, image_size, cond_bn=cond_bn)


def build_nets(
    arch: str, nz: int, num_classes: int, image_size: int, *, embed_dim: int | None = None, cond_bn: bool = True,
    d_dropout: float = 0.5, twin: bool = False,
) -> tuple[nn.Module, nn.Module]:
    """Initialised (G, D) of one arch; cond_bn: sndcgan/resnet, d_dropout: paper/imagenet, twin: 2K class logits."""
    if embed_dim is not None and embed_dim < 1:
        raise UserError(f"--embed_dim must be a positive integer, got {embed_dim}")
    G = build_generator(arch, nz, num_classes, image_size, cond_bn=cond_bn)
    if ARCH_SPECS[arch].d_dropout:
        return G, _module(arch).Discriminator(num_classes, image_size, dropout=d_dropout, embed_dim=embed_dim,
                                              twin=twin)
    return G, _module(arch).Discriminator(num_classes, image_size, embed_dim=embed_dim, twin=twin)


def generator_for(config: TrainConfig, num_classes: int) -> nn.Module:
    """The G a resolved config describes (sampling needs no D)."""
    return build_generator(config.arch, config.nz, num_classes, config.image_size, cond_bn=config.g_cond == "cbn")


def nets_for(config: TrainConfig, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """The (G, D) a resolved config describes: D's class head is an embedding for d2dce, 2K logits for tac/adc."""
    embed_dim = D2D_EMBED_DIM if config.cls_loss == "d2dce" else None
    return build_nets(config.arch, config.nz, num_classes, config.image_size, embed_dim=embed_dim,
                      cond_bn=config.g_cond == "cbn", d_dropout=config.d_dropout,
                      twin=config.cls_loss in TWIN_CLASS_LOSSES)
