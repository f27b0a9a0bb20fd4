"""SN-DCGAN: the standard CNN of Miyato et al. 2018 ("Spectral Normalization for GANs", Table 3).

D is the paper's discriminator: seven convs with LeakyReLU(0.1), spectral norm on every conv and linear
layer (heads included), linear heads on the flattened 512 x 4 x 4 features. For 64 and 128 px, one or two
extra conv4x4 s2 stages (64 wide) follow the first conv, so the rest of D and its heads stay the 32 px ones.

G replaces the paper's transposed convs with nearest-neighbour upsampling + conv3x3, which cannot make
checkerboard artifacts: linear -> 4x4x256, BN + ReLU, then per x2 stage upsample, conv3x3 halving the width
(floor 32), BN + ReLU; a final conv3x3 -> 3 and tanh. With cond_bn every BN is class-conditional and z alone
enters the linear layer; without it the one-hot class is concatenated to z and the BNs are plain.

Init is DCGAN's N(0, 0.02) (init_weights): the SN paper built its CNN experiments on DCGAN, and D's weight
scale does not matter anyway, as spectral norm divides it out.
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from acgan.models.layers import TwoHeadD, apply_spectral_norm, check_image_size, init_weights, make_bn, one_hot_concat

SUPPORTED_SIZES = (32, 64, 128)


class Generator(nn.Module):
    """z (B, nz) and class y (B,) -> image (B, 3, S, S) in [-1, 1]."""

    def __init__(self, nz: int = 128, num_classes: int = 10, image_size: int = 32, cond_bn: bool = True) -> None:
        super().__init__()
        check_image_size(image_size, SUPPORTED_SIZES, "sndcgan")
        self.nz, self.num_classes, self.image_size, self.cond_bn = nz, num_classes, image_size, cond_bn
        num_stages = {32: 3, 64: 4, 128: 5}[image_size]
        widths = [max(256 >> i, 32) for i in range(num_stages + 1)]  # 256, 128, 64, 32 (, 32, 32)
        # no biases before a BN: it subtracts them again
        self.fc = nn.Linear(nz + (0 if cond_bn else num_classes), widths[0] * 4 * 4, bias=False)
        self.bn0 = make_bn(widths[0], num_classes, cond_bn)
        self.convs = nn.ModuleList(nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False) for c_in, c_out in pairwise(widths))
        self.bns = nn.ModuleList(make_bn(c, num_classes, cond_bn) for c in widths[1:])
        self.out = nn.Conv2d(widths[-1], 3, 3, 1, 1)
        init_weights(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Generate images of classes y from noise z."""
        h = self.fc(z if self.cond_bn else one_hot_concat(z, y, self.num_classes))
        h = F.relu(self.bn0(h.view(len(h), -1, 4, 4), y))  # (B, 256, 4, 4)
        for conv, bn in zip(self.convs, self.bns, strict=True):
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")  # (B, C, 2H, 2W)
            h = F.relu(bn(conv(h), y))  # (B, C/2, 2H, 2W)
        return torch.tanh(self.out(h))  # (B, 3, S, S)


class Discriminator(TwoHeadD):
    """Image (B, 3, S, S) -> (source logit (B,), class logits (B, K) or embedding (B, E))."""

    def __init__(
        self, num_classes: int = 10, image_size: int = 32, embed_dim: int | None = None, twin: bool = False
    ) -> None:
        super().__init__()
        check_image_size(image_size, SUPPORTED_SIZES, "sndcgan")
        self.num_classes, self.image_size = num_classes, image_size
        extra = [(64, 64, 4, 2)] * {32: 0, 64: 1, 128: 2}[image_size]
        # (c_in, c_out, kernel, stride): three (or 4, 5) stride-2 convs take S to 4x4
        plan = [(3, 64, 3, 1), *extra, (64, 64, 4, 2), (64, 128, 3, 1), (128, 128, 4, 2)]
        plan += [(128, 256, 3, 1), (256, 256, 4, 2), (256, 512, 3, 1)]
        layers: list[nn.Module] = []
        for c_in, c_out, k, stride in plan:
            layers += [nn.Conv2d(c_in, c_out, k, stride, 1), nn.LeakyReLU(0.1, inplace=True)]
        self.net = nn.Sequential(*layers)
        self.add_heads(512 * 4 * 4, num_classes, embed_dim, twin)
        init_weights(self)
        apply_spectral_norm(self)  # after init: SN's power iteration starts from the final weights

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Source logit (real vs fake) and class output for each image."""
        return self.heads(self.net(x).flatten(1))  # features (B, 512 * 4 * 4)
