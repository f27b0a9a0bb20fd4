"""The ACGAN paper's own ImageNet 128x128 networks (Odena et al. 2017, appendix table "ImageNet hyperparameters").

The table, as implemented here (kernel, stride, feature maps, BN, dropout, nonlinearity):

  G: input 110 = z (100) + one-hot class (10)
     Linear               -      -    768   no BN   ReLU
     Transposed conv      5x5    2    384   BN      ReLU
     Transposed conv      5x5    2    256   BN      ReLU
     Transposed conv      5x5    2    192   BN      ReLU
     Transposed conv      5x5    2    3     no BN   Tanh
  D: input 128x128x3; LeakyReLU slope 0.2, Dropout 0.5 on every conv
     Conv 3x3 s2 16 (no BN), s1 32, s2 64, s1 128, s2 256, s1 512 (BN on all but the first)
     Linear 11 (source + 10 classes)
  Init: weights N(0, 0.02), biases 0.

Assumptions, where the table leaves room:
- The linear layer's 768 feature maps are 8x8 (Linear 110 -> 768*8*8): four stride-2 transposed convs must
  end at 128, as in DCGAN's "project and reshape". (A widely copied PyTorch port instead starts from 1x1
  with unpadded 5x5 convs and adds a fifth, 8x8 transposed conv; that departs from the table.)
- Transposed convs pad like TensorFlow's 'SAME' (padding 2, output_padding 1): exactly doubles the size.
- D's convs pad 1 ('SAME'), so the six convs take 128 -> 16 and the heads read 512*16*16 features.
- The single 11-way linear output ("soft-sigmoid") is split into the usual two heads: source 1, class K.
- nz and K follow the caller (the paper: 100 and 10 per model, 100 models for all of ImageNet).
"""

from __future__ import annotations

from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import nn

from acgan.models.layers import BitDropout, TwoHeadD, check_image_size, init_weights, one_hot_concat

SUPPORTED_SIZES = (128,)
G_WIDTHS = (768, 384, 256, 192)
D_PLAN = ((3, 16, 2), (16, 32, 1), (32, 64, 2), (64, 128, 1), (128, 256, 2), (256, 512, 1))  # (c_in, c_out, stride)


class Generator(nn.Module):
    """z (B, nz) and class y (B,) -> image (B, 3, 128, 128) in [-1, 1]."""

    def __init__(self, nz: int = 100, num_classes: int = 10, image_size: int = 128) -> None:
        super().__init__()
        check_image_size(image_size, SUPPORTED_SIZES, "imagenet")
        self.nz, self.num_classes, self.image_size = nz, num_classes, image_size
        self.fc = nn.Linear(nz + num_classes, G_WIDTHS[0] * 8 * 8)
        layers: list[nn.Module] = []
        for c_in, c_out in pairwise(G_WIDTHS):
            layers += [nn.ConvTranspose2d(c_in, c_out, 5, 2, 2, output_padding=1), nn.BatchNorm2d(c_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(G_WIDTHS[-1], 3, 5, 2, 2, output_padding=1), nn.Tanh()]
        self.net = nn.Sequential(*layers)  # 8 -> 16 -> 32 -> 64 -> 128
        init_weights(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Generate images of classes y from noise z."""
        h = F.relu(self.fc(one_hot_concat(z, y, self.num_classes)))  # (B, 768 * 8 * 8)
        return self.net(h.view(len(h), G_WIDTHS[0], 8, 8))  # (B, 3, 128, 128)


class Discriminator(TwoHeadD):
    """Image (B, 3, 128, 128) -> (source logit (B,), class logits (B, K) or embedding (B, E))."""

    def __init__(
        self, num_classes: int = 10, image_size: int = 128, dropout: float = 0.5, embed_dim: int | None = None,
        twin: bool = False,
    ) -> None:
        super().__init__()
        check_image_size(image_size, SUPPORTED_SIZES, "imagenet")
        self.num_classes, self.image_size = num_classes, image_size
        layers: list[nn.Module] = []
        for i, (c_in, c_out, stride) in enumerate(D_PLAN):
            layers.append(nn.Conv2d(c_in, c_out, 3, stride, 1))
            if i > 0:  # the table has no BatchNorm on the first conv
                layers.append(nn.BatchNorm2d(c_out))
            layers += [nn.LeakyReLU(0.2, inplace=True), BitDropout(dropout)]
        self.net = nn.Sequential(*layers)
        self.add_heads(512 * (image_size // 8) ** 2, num_classes, embed_dim, twin)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Source logit (real vs fake) and class output for each image."""
        return self.heads(self.net(x).flatten(1))  # features (B, 512 * 16 * 16)
