"""The ACGAN paper's CIFAR-10 networks: Generator(z, y) -> x and Discriminator(x) -> (source, class logits)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from acgan.errors import UserError

SUPPORTED_SIZES = (32, 64, 128)


def _check_size(image_size: int) -> int:
    """Number of extra x2 stages beyond the paper's 32x32 nets."""
    if image_size not in SUPPORTED_SIZES:
        raise UserError(f"--image_size must be one of {', '.join(map(str, SUPPORTED_SIZES))}, got {image_size}")
    return {32: 0, 64: 1, 128: 2}[image_size]


class Generator(nn.Module):
    """z (B, nz) and class y (B,) -> image (B, 3, S, S) in [-1, 1]."""

    def __init__(self, nz: int = 100, num_classes: int = 10, image_size: int = 32) -> None:
        super().__init__()
        self.nz, self.num_classes, self.image_size = nz, num_classes, image_size
        extra = _check_size(image_size)
        self.fc = nn.Linear(nz + num_classes, 384)
        # 1x1 -> 4x4 (k4 s1 p0), then each stage doubles: 4 -> 8 -> 16 -> 32 (-> 64 -> 128)
        widths = [384, 192, 96, 48] + [max(48 >> (i + 1), 16) for i in range(extra)]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            stride, pad = (1, 0) if i == 0 else (2, 1)
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride, pad), nn.BatchNorm2d(c_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Generate images of classes y from noise z."""
        onehot = F.one_hot(y, self.num_classes).to(z.dtype)  # (B, K)
        h = self.fc(torch.cat([z, onehot], dim=1))  # (B, 384)
        return self.net(h[:, :, None, None])  # (B, 3, S, S)


class Discriminator(nn.Module):
    """Image (B, 3, S, S) -> (source logit (B,), class logits (B, K))."""

    def __init__(self, num_classes: int = 10, image_size: int = 32, dropout: float = 0.5) -> None:
        super().__init__()
        self.num_classes, self.image_size = num_classes, image_size
        _check_size(image_size)
        # (c_in, c_out, stride): three stride-2 convs take S to S/8, e.g. 32 -> 4
        plan = [(3, 16, 2), (16, 32, 1), (32, 64, 2), (64, 128, 1), (128, 256, 2), (256, 512, 1)]
        layers: list[nn.Module] = []
        for i, (c_in, c_out, stride) in enumerate(plan):
            layers.append(nn.Conv2d(c_in, c_out, 3, stride, 1))
            if i > 0:  # the paper leaves BatchNorm and Dropout off the first layer
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            if i > 0:
                layers.append(BitDropout(dropout))
        self.net = nn.Sequential(*layers)
        num_features = 512 * (image_size // 8) ** 2
        self.fc_source = nn.Linear(num_features, 1)
        self.fc_class = nn.Linear(num_features, num_classes)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Source logit (real vs fake) and class logits for each image."""
        h = self.net(x).flatten(1)  # (B, 512 * (S/8)^2)
        return self.fc_source(h).squeeze(1), self.fc_class(h)  # (B,), (B, K)


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
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
