"""Pieces shared by every architecture: the D heads, class-conditional BN, BitDropout, init, size checks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from acgan.errors import UserError


def check_image_size(image_size: int, supported: tuple[int, ...], arch: str) -> None:
    """Raise a one-line UserError naming --image_size when this arch has no nets for that size."""
    if image_size not in supported:
        sizes = ", ".join(map(str, supported))
        raise UserError(f"--image_size must be one of {sizes} for --arch {arch}, got {image_size}")


class TwoHeadD(nn.Module):
    """Base of every D: a source head and a class head on D's features, plus class proxies when embedding."""

    proxies: nn.Parameter | None

    def add_heads(self, num_features: int, num_classes: int, embed_dim: int | None, twin: bool = False) -> None:
        """Source head F -> 1; class head F -> K logits (2K for tac/adc), or F -> E embedding with (K, E) proxies."""
        self.fc_source = nn.Linear(num_features, 1)
        num_out = embed_dim if embed_dim is not None else num_classes * (2 if twin else 1)
        self.fc_class = nn.Linear(num_features, num_out)
        if embed_dim is None:
            self.register_parameter("proxies", None)
        else:
            # N(0, 1) like an nn.Embedding: ReACGAN normalises both sides, so only the directions matter
            self.proxies = nn.Parameter(torch.randn(num_classes, embed_dim))

    def heads(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (B, F) -> source logit (B,), class logits (B, K or 2K) or embedding (B, E), in autocast's dtype."""
        return self.fc_source(h).squeeze(1), self.fc_class(h)


class DenseConvTranspose2d(nn.ConvTranspose2d):
    """A k x k transposed conv (stride 1, no padding) on 1x1 inputs, computed as the matmul it is.

    Same parameters, state_dict and output as nn.ConvTranspose2d, but oneDNN's transposed-conv kernels run this
    shape (a 1x1 map to k x k) several times slower than a plain matmul does on CPU, in fp32 and bf16 alike.
    """

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        """x (B, C_in, 1, 1) -> (B, C_out, k, k)."""
        plain = self.stride == (1, 1) and self.padding == (0, 0) and self.dilation == (1, 1) and self.groups == 1
        if x.shape[-2:] != (1, 1) or not plain or output_size is not None:
            return super().forward(x, output_size)
        kh, kw = self.kernel_size
        w = self.weight.reshape(self.in_channels, self.out_channels * kh * kw)  # (C_in, C_out*k*k)
        if self.bias is None:
            h = x.flatten(1) @ w
        else:  # addmm keeps autocast's dtype; adding an fp32 bias afterwards would promote the output to fp32
            h = torch.addmm(self.bias.repeat_interleave(kh * kw), x.flatten(1), w)
        return h.view(x.shape[0], self.out_channels, kh, kw)


class CondBatchNorm2d(nn.Module):
    """BatchNorm2d whose per-channel gain and bias are looked up by class: x (B, C, H, W), y (B,)."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(num_features, affine=False)
        self.gain = nn.Embedding(num_classes, num_features)
        self.bias = nn.Embedding(num_classes, num_features)
        # every class starts as the identity affine map; training pulls the classes apart
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Normalise x, then scale and shift each image's channels by its class's gain and bias."""
        gain, bias = self.gain(y)[:, :, None, None], self.bias(y)[:, :, None, None]  # (B, C, 1, 1)
        return self.bn(x) * gain + bias  # (B, C, H, W)


class PlainBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d called like CondBatchNorm2d, so a G can hold either; the class is ignored."""

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Normalise x with the learned affine map shared by all classes."""
        return super().forward(x)


def make_bn(num_features: int, num_classes: int, cond: bool) -> CondBatchNorm2d | PlainBatchNorm2d:
    """A G's BatchNorm: class-conditional when cond, else plain (the class then enters through z)."""
    return CondBatchNorm2d(num_features, num_classes) if cond else PlainBatchNorm2d(num_features)


def one_hot_concat(z: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """z (B, nz) and y (B,) -> (B, nz + K): the ACGAN paper's way of conditioning G."""
    return torch.cat([z, F.one_hot(y, num_classes).to(z.dtype)], dim=1)


def apply_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectrally normalise every conv and linear layer of module, in place; returns module."""
    # collect first: registering a parametrization adds submodules, which must not happen mid-iteration
    layers = [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    for m in layers:
        spectral_norm(m)
    return module


class BitDropout(nn.Module):
    """Dropout whose p=0.5 mask comes from random bytes, 8 mask bits per byte.

    Same distribution as nn.Dropout(0.5), but the mask costs n/8 random bytes instead of n Bernoulli
    draws: on CPU, bernoulli_ was the single largest item of the whole training step (39% of the time).
    """

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Zero each element with probability p and scale the rest by 1/(1-p), in training only."""
        if not self.training or self.p == 0:
            return x
        if self.p != 0.5:
            return F.dropout(x, self.p, training=True)
        n = x.numel()
        random_bytes = torch.randint(0, 256, ((n + 7) // 8, 1), dtype=torch.uint8, device=x.device)
        shifts = torch.arange(8, dtype=torch.uint8, device=x.device)
        bits = random_bytes.bitwise_right_shift(shifts).bitwise_and_(1)  # (n/8, 8) independent fair bits
        scale = bits.view(-1)[:n].view(x.shape).to(x.dtype).mul_(2.0)  # 0 or 1/(1-p)
        return x * scale

    def extra_repr(self) -> str:
        return f"p={self.p}"


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: weights N(0, 0.02), BatchNorm scales N(1, 0.02), biases zero."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
