"""The ACGAN paper's CIFAR-10 networks: Generator(z, y) -> x and Discriminator(x) -> (source, class logits)."""

from __future__ import annotations

import torch
from torch import nn

from acgan.models.layers import (
    BitDropout,
    DenseConvTranspose2d,
    TwoHeadD,
    check_image_size,
    init_weights,
    one_hot_concat,
)

SUPPORTED_SIZES = (32, 64, 128)


def _extra_stages(image_size: int) -> int:
    """Number of extra x2 stages beyond the paper's 32x32 nets."""
    check_image_size(image_size, SUPPORTED_SIZES, "paper")
    return {32: 0, 64: 1, 128: 2}[image_size]


class Generator(nn.Module):
    """z (B, nz) and class y (B,) -> image (B, 3, S, S) in [-1, 1]."""

    def __init__(self, nz: int = 100, num_classes: int = 10, image_size: int = 32) -> None:
        super().__init__()
        self.nz, self.num_classes, self.image_size = nz, num_classes, image_size
        extra = _extra_stages(image_size)
        self.fc = nn.Linear(nz + num_classes, 384)
        # 1x1 -> 4x4 (k4 s1 p0), then each stage doubles: 4 -> 8 -> 16 -> 32 (-> 64 -> 128)
        widths = [384, 192, 96, 48] + [max(48 >> (i + 1), 16) for i in range(extra)]
        layers: list[nn.Module] = []
        for i, (c_in, c_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            up = DenseConvTranspose2d(c_in, c_out, 4, 1, 0) if i == 0 else nn.ConvTranspose2d(c_in, c_out, 4, 2, 1)
            layers += [up, nn.BatchNorm2d(c_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], 3, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Generate images of classes y from noise z."""
        h = self.fc(one_hot_concat(z, y, self.num_classes))  # (B, 384)
        return self.net(h[:, :, None, None])  # (B, 3, S, S)


class Discriminator(TwoHeadD):
    """Image (B, 3, S, S) -> (source logit (B,), class logits (B, K) or embedding (B, E))."""

    def __init__(
        self, num_classes: int = 10, image_size: int = 32, dropout: float = 0.5, embed_dim: int | None = None,
        twin: bool = False,
    ) -> None:
        super().__init__()
        self.num_classes, self.image_size = num_classes, image_size
        _extra_stages(image_size)
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
        self.add_heads(512 * (image_size // 8) ** 2, num_classes, embed_dim, twin)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Source logit (real vs fake) and class output for each image."""
        return self.heads(self.net(x).flatten(1))  # features (B, 512 * (S/8)^2)
