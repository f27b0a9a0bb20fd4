"""The FID Inception-v3 as an eager module built from the TorchScript file's own weights, for speed on a CPU.

The published TorchScript runs every block's branches through `contiguous()`, which turns channels-last maps
back into NCHW, so every later convolution re-lays out its input and the pools take PyTorch's slow NCHW path
(the 3x3 average pool with count_include_pad=False is many times slower in NCHW). It also runs each BatchNorm and
ReLU as separate passes over maps that are megabytes per image. This module has the same layers in the same
order (the TF Inception of FID papers: mixed ... mixed_10 with the avg/max pool choices of that graph), with
each BatchNorm folded into its convolution, and it stays channels-last throughout. Its features match the
TorchScript's to float rounding; `rebuild` checks that on a probe image before it is ever used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

BN_EPS = 1e-3  # the TF graph's BatchNorm epsilon (no scale, only beta)
STEM = ("conv", "conv_1", "conv_2", "pool0", "conv_3", "conv_4", "pool1")
# block kind of each mixed layer, in the order the TF graph runs them
BLOCKS = (("mixed", "a"), ("mixed_1", "a"), ("mixed_2", "a"), ("mixed_3", "b"), ("mixed_4", "c"),
          ("mixed_5", "c"), ("mixed_6", "c"), ("mixed_7", "c"), ("mixed_8", "d"), ("mixed_9", "e_avg"),
          ("mixed_10", "e_max"))
CONV_KEYS = ("weight", "beta", "mean", "var")
PROBE_TOLERANCE = 1e-3  # max |difference| of features (values up to about 10) between the two on the probe


class ConvReLU(nn.Module):
    """Conv (no bias) + BatchNorm (eps 1e-3, beta only) + ReLU, with the BatchNorm folded into the conv."""

    def __init__(self, weight: Tensor, beta: Tensor, mean: Tensor, var: Tensor, stride: int,
                 padding: int | tuple[int, int]) -> None:
        super().__init__()
        scale = torch.rsqrt(var.double() + BN_EPS)  # (C_out,) in float64 so the fold adds no rounding of its own
        out_ch, in_ch, kh, kw = weight.shape
        self.conv = nn.Conv2d(in_ch, out_ch, (kh, kw), stride, padding, bias=True)
        with torch.no_grad():
            self.conv.weight.copy_((weight.double() * scale[:, None, None, None]).float())
            self.conv.bias.copy_((beta.double() - mean.double() * scale).float())

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv(x), inplace=True)


def _avg3(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


def _max3(x: Tensor) -> Tensor:
    return F.max_pool2d(x, 3, 1, 1)


def _max3s2(x: Tensor) -> Tensor:
    return F.max_pool2d(x, 3, 2)


def _chain(tower: nn.Module, x: Tensor) -> Tensor:
    for layer in tower.children():  # conv, conv_1, conv_2 ... in the order the TF graph applies them
        x = layer(x)
    return x


def _block(m: nn.Module, kind: str, x: Tensor) -> Tensor:
    """One mixed layer; branches are concatenated in the TF graph's order."""
    if kind in ("a", "c"):
        return torch.cat([m.conv(x), _chain(m.tower, x), _chain(m.tower_1, x), m.tower_2.conv(_avg3(x))], 1)
    if kind == "b":
        return torch.cat([m.conv(x), _chain(m.tower, x), _max3s2(x)], 1)
    if kind == "d":
        return torch.cat([_chain(m.tower, x), _chain(m.tower_1, x), _max3s2(x)], 1)
    a = m.tower_conv(x)
    b = m.tower_1_conv_1(m.tower_1_conv(x))
    pooled = _avg3(x) if kind == "e_avg" else _max3(x)
    return torch.cat([m.conv(x), m.tower_mixed_conv(a), m.tower_mixed_conv_1(a), m.tower_1_mixed_conv(b),
                      m.tower_1_mixed_conv_1(b), m.tower_2_conv(pooled)], 1)


class InceptionFeatures(nn.Module):
    """(N, 3, 299, 299) normalised as NVlabs does -> (N, 2048) pool features, channels-last throughout."""

    def __init__(self, layers: nn.Module) -> None:
        super().__init__()
        self.layers = _mirror(layers)

    def forward(self, x: Tensor) -> Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        for name in STEM:
            x = _max3s2(x) if name.startswith("pool") else getattr(self.layers, name)(x)
        for name, kind in BLOCKS:
            x = _block(getattr(self.layers, name), kind, x)
        return F.avg_pool2d(x, 8).reshape(-1, 2048)  # (N, 2048)


def _is_conv(module: nn.Module) -> bool:
    return all(hasattr(module, k) for k in (*CONV_KEYS, "stride", "padding"))


def _mirror(module: nn.Module) -> nn.Module:
    """The same tree of names, each TF conv unit replaced by a folded ConvReLU; pools are code, not modules."""
    if _is_conv(module):
        w, beta, mean, var = (getattr(module, k).detach().float().cpu() for k in CONV_KEYS)
        padding = module.padding if isinstance(module.padding, int) else tuple(module.padding)
        return ConvReLU(w, beta, mean, var, int(module.stride), padding)
    out = nn.Module()
    for name, child in module.named_children():
        if "pool" not in name:
            out.add_module(name, _mirror(child))
    return out


def rebuild(module: nn.Module, probe: Tensor) -> InceptionFeatures | None:
    """The eager copy of a features-only TF Inception, or None when the module is not one or disagrees on `probe`.

    `probe` is a float (1, 3, 299, 299) input; the copy is kept only if its features equal the module's to
    PROBE_TOLERANCE, so a file of another structure can never change a score, only miss the speed-up.
    """
    layers = getattr(getattr(module, "net", None), "layers", None)
    names = [n for n, _ in layers.named_children()] if layers is not None else []
    if names != [*STEM, *(n for n, _ in BLOCKS), "pool2"]:
        return None
    try:
        fast = InceptionFeatures(layers).eval()
        with torch.no_grad():
            same = (fast(probe) - module(probe)).abs().max().item() <= PROBE_TOLERANCE
    except (AttributeError, RuntimeError, TypeError, ValueError):
        return None
    return fast if same else None
