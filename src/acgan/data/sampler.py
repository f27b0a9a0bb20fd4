"""Device-resident epoch batches: the whole uint8 dataset lives on the device, batches are gathered there."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from acgan.data.dataset import ImageDataset, to_float
from acgan.errors import UserError


class EpochSampler:
    """Device-resident batches: normalization and random horizontal flips on the device, no per-image Python work."""

    def __init__(self, dataset: ImageDataset, batch_size: int, *, device: torch.device | str, seed: int,
                 rank: int = 0, world_size: int = 1, hflip: bool = True) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad sampler setup: batch_size={batch_size}, rank={rank}, world_size={world_size}")
        num_images = len(dataset)
        if num_images < world_size * batch_size:
            raise UserError(
                f"the dataset has {num_images} images, fewer than one batch per process "
                f"({world_size} x batch size {batch_size}); lower --batch-size"
            )
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.hflip = hflip
        self.device = torch.device(device)
        self.num_images = num_images
        # drop_last, and the same count on every rank, so collective ops in DDP never wait on a missing batch.
        self.num_batches = num_images // world_size // batch_size
        self.images = dataset.images.to(self.device)  # (N, 3, H, W) uint8, copied to the device once
        self.labels = dataset.labels.to(self.device)  # (N,) int64

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x in [-1, 1] (B, 3, H, W) float32, y (B,) int64) on the device for batches start.. of epoch."""
        if not 0 <= start <= self.num_batches:
            raise ValueError(f"start must lie in [0, {self.num_batches}], got {start}")
        index, flip = self._shard(epoch)
        for b in range(start, self.num_batches):
            idx = index[b * self.batch_size:(b + 1) * self.batch_size]  # (B,) on device
            x = to_float(self.images.index_select(0, idx))  # (B, 3, H, W) float32
            if self.hflip:
                mask = flip[b * self.batch_size:(b + 1) * self.batch_size]
                x = torch.where(mask[:, None, None, None], x.flip(3), x)
            yield x, self.labels.index_select(0, idx)

    def _shard(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's image indices and flip bits for an epoch, moved to the device together."""
        # Seeded by (seed, epoch) alone: every rank draws the same permutation, and a resumed run
        # redraws exactly the one an uninterrupted run used.
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
        perm = torch.randperm(self.num_images, generator=gen)
        # Drawn even when hflip is off so the permutation does not depend on the flag.
        flips = torch.rand(self.num_images, generator=gen) < 0.5
        length = self.num_batches * self.batch_size
        index = perm[self.rank::self.world_size][:length]
        flip = flips[self.rank::self.world_size][:length]
        return index.to(self.device), flip.to(self.device)
