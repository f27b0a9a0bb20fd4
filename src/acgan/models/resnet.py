"""SNGAN/BigGAN-style residual nets (Miyato et al. 2018 CIFAR ResNet; BigGAN's block layout by resolution).

G: linear z -> 4x4xC, up-blocks (BN-ReLU-up-conv3-BN-ReLU-conv3, shortcut up + conv1x1), BN-ReLU-conv3-tanh.
D: an optimised first block, then SN ResBlocks, ReLU, global sum pooling, SN linear heads; spectral norm on
every conv and linear layer. Widths per resolution (each net stays under ~10M parameters):

  32 px  G 256 -> 256, 256, 256 (SNGAN CIFAR)      D 128, 128v, 128, 128 (v: downsamples; SNGAN CIFAR)
  64 px  G 512 -> 512, 256, 128, 64                D 64v, 128v, 256v, 512v, 512
  128 px G 512 -> 512, 256, 128, 64, 32            D 32v, 64v, 128v, 256v, 512v, 512

The 64/128 px widths are BigGAN's multipliers (16, 16, 8, 4, 2, 1 in G; 1, 2, 4, 8, 16, 16 in D) at base width
32 (G) or 32/64 (D) instead of BigGAN's 96. With cond_bn every BN in G is class-conditional; without it the
one-hot class is concatenated to z. G's convs carry no bias: each feeds, directly or through the residual sum,
a BN that subtracts it again. Init: xavier_uniform, as in the SNGAN and BigGAN reference code; it scales with
fan-in, so 1x1 shortcuts and 3x3 branches start with comparable output variance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from acgan.models.layers import TwoHeadD, apply_spectral_norm, check_image_size, make_bn, one_hot_concat

SUPPORTED_SIZES = (32, 64, 128)
# G: (width at 4x4, output width of each up-block); D: (output width, downsample) per block
G_PLANS = {32: (256, [256, 256, 256]), 64: (512, [512, 256, 128, 64]), 128: (512, [512, 256, 128, 64, 32])}
D_PLANS = {
    32: [(128, True), (128, True), (128, False), (128, False)],
    64: [(64, True), (128, True), (256, True), (512, True), (512, False)],
    128: [(32, True), (64, True), (128, True), (256, True), (512, True), (512, False)],
}


def _init_xavier(module: nn.Module) -> None:
    """xavier_uniform weights and zero biases for every conv and linear layer."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _up(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour x2 upsampling."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, 2H, 2W)


class GBlock(nn.Module):
    """Up-ResBlock: (B, C_in, H, W) and y -> (B, C_out, 2H, 2W)."""

    def __init__(self, c_in: int, c_out: int, num_classes: int, cond_bn: bool) -> None:
        super().__init__()
        self.bn1, self.bn2 = make_bn(c_in, num_classes, cond_bn), make_bn(c_out, num_classes, cond_bn)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Residual branch plus upsampled, projected input."""
        h = self.conv1(_up(F.relu(self.bn1(x, y))))
        h = self.conv2(F.relu(self.bn2(h, y)))
        return h + _up(self.shortcut(x))  # a 1x1 conv commutes with nearest upsampling: convolve the small map


class DBlock(nn.Module):
    """ResBlock of D: (B, C_in, H, W) -> (B, C_out, H/2, W/2) when down, else same size."""

    def __init__(self, c_in: int, c_out: int, down: bool, first: bool = False) -> None:
        super().__init__()
        self.down, self.first = down, first
        self.conv1, self.conv2 = nn.Conv2d(c_in, c_out, 3, 1, 1), nn.Conv2d(c_out, c_out, 3, 1, 1)
        # identity shortcut only where shapes already match, as in SNGAN
        self.shortcut = nn.Conv2d(c_in, c_out, 1) if (c_in != c_out or down) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual branch plus (projected, pooled) input."""
        # the first block sees raw pixels: no ReLU before its first conv (SNGAN's OptimizedBlock)
        h = self.conv2(F.relu(self.conv1(x if self.first else F.relu(x))))
        # pool before the 1x1 conv: the two commute, and pooling first leaves the conv 4x fewer positions
        sc = F.avg_pool2d(x, 2) if self.down else x
        sc = sc if self.shortcut is None else self.shortcut(sc)
        return (F.avg_pool2d(h, 2) if self.down else h) + sc


class Generator(nn.Module):
    """z (B, nz) and class y (B,) -> image (B, 3, S, S) in [-1, 1]."""

    def __init__(self, nz: int = 128, num_classes: int = 10, image_size: int = 32, cond_bn: bool = True) -> None:
        super().__init__()
        check_image_size(image_size, SUPPORTED_SIZES, "resnet")
        self.nz, self.num_classes, self.image_size, self.cond_bn = nz, num_classes, image_size, cond_bn
        base, widths = G_PLANS[image_size]
        self.fc = nn.Linear(nz + (0 if cond_bn else num_classes), base * 4 * 4)
        c_ins = [base, *widths[:-1]]
        self.blocks = nn.ModuleList(GBlock(a, b, num_classes, cond_bn) for a, b in zip(c_ins, widths, strict=True))
        self.bn = make_bn(widths[-1], num_classes, cond_bn)
        self.out = nn.Conv2d(widths[-1], 3, 3, 1, 1)
        _init_xavier(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Generate images of classes y from noise z."""
        h = self.fc(z if self.cond_bn else one_hot_concat(z, y, self.num_classes))
        h = h.view(len(h), -1, 4, 4)  # (B, C, 4, 4)
        for block in self.blocks:
            h = block(h, y)  # (B, C', 2H, 2W)
        return torch.tanh(self.out(F.relu(self.bn(h, y))))  # (B, 3, S, S)


class Discriminator(TwoHeadD):
    """Image (B, 3, S, S) -> (source logit (B,), class logits (B, K) or embedding (B, E))."""

    def __init__(
        self, num_classes: int = 10, image_size: int = 32, embed_dim: int | None = None, twin: bool = False
    ) -> None:
        super().__init__()
        check_image_size(image_size, SUPPORTED_SIZES, "resnet")
        self.num_classes, self.image_size = num_classes, image_size
        plan = D_PLANS[image_size]
        c_ins = [3] + [c for c, _ in plan[:-1]]
        pairs = enumerate(zip(c_ins, plan, strict=True))
        self.blocks = nn.Sequential(*(DBlock(c_in, c_out, down, first=i == 0) for i, (c_in, (c_out, down)) in pairs))
        self.add_heads(plan[-1][0], num_classes, embed_dim, twin)
        _init_xavier(self)
        apply_spectral_norm(self)  # after init: SN's power iteration starts from the final weights

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Source logit (real vs fake) and class output for each image."""
        h = F.relu(self.blocks(x)).sum(dim=(2, 3))  # (B, C): global sum pooling, as in SNGAN
        return self.heads(h)
