"""Epoch batches: gathered on the device from a device-resident copy, or streamed from host memory or a memory map.

Both samplers draw the same permutation and flip bits for (seed, epoch) and turn uint8 into floats with the
same device ops, so a run gives bit-identical batches whichever path it takes.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections.abc import Iterator

import numpy as np
import torch

from acgan.config import RESIDENT_SHARE
from acgan.data.dataset import ImageDataset, to_float
from acgan.data.prepared import release_pages
from acgan.errors import UserError

PREFETCH_BATCHES = 4  # batches the streaming thread may run ahead: enough to hide a slow read, little memory


class EpochSampler:
    """Device-resident batches: normalization and random horizontal flips on the device, no per-image Python work."""

    placement = "resident"

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
        self.images, self.labels = self._place(dataset)

    def _place(self, dataset: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, H, W) uint8 images and (N,) labels, copied to the device once."""
        images, labels = dataset.images.to(self.device), dataset.labels.to(self.device)
        if self.device.type != "cpu":
            release_pages(dataset)  # a memory map read for the copy need not stay in this process's RSS
        return images, labels

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x in [-1, 1] (B, 3, H, W) float32, y (B,) int64) on the device for batches start.. of epoch."""
        if not 0 <= start <= self.num_batches:
            raise ValueError(f"start must lie in [0, {self.num_batches}], got {start}")
        index, flip = (t.to(self.device) for t in self._shard(epoch))  # one copy per epoch, none per batch
        for b in range(start, self.num_batches):
            idx = index[b * self.batch_size:(b + 1) * self.batch_size]  # (B,) on the device
            yield self._finish(self.images.index_select(0, idx), flip, b), self.labels.index_select(0, idx)

    def _finish(self, images: torch.Tensor, flip: torch.Tensor, b: int) -> torch.Tensor:
        """uint8 (B, 3, H, W) on the device -> floats in [-1, 1], with batch b's flips."""
        x = to_float(images)  # (B, 3, H, W) float32
        if self.hflip:
            mask = flip[b * self.batch_size:(b + 1) * self.batch_size]  # (B,) bool on the device
            x = torch.where(mask[:, None, None, None], x.flip(3), x)
        return x

    def _shard(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's image indices and flip bits for an epoch (on the CPU)."""
        # Seeded by (seed, epoch) alone: every rank draws the same permutation, and a resumed run
        # redraws exactly the one an uninterrupted run used.
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
        perm = torch.randperm(self.num_images, generator=gen)
        # Drawn even when hflip is off so the permutation does not depend on the flag.
        flips = torch.rand(self.num_images, generator=gen) < 0.5
        length = self.num_batches * self.batch_size
        return perm[self.rank::self.world_size][:length], flips[self.rank::self.world_size][:length]


class StreamSampler(EpochSampler):
    """Batches gathered on the host; for a GPU by a background thread, pinned and copied ahead, non-blocking."""

    placement = "stream"

    def _place(self, dataset: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
        """The images stay where they are (RAM or a memory map); the labels are small."""
        self.dataset = dataset
        self._images_np, self._labels_np = dataset.images.numpy(), dataset.labels.numpy()
        # A thread gathers ahead only for a GPU, whose copies it overlaps with compute. A CPU step already uses
        # every core: a thread beside it would preempt the step's OpenMP threads, and each op would wait for the
        # preempted one. There a batch is gathered in place, in about a millisecond.
        self.background = self.device.type != "cpu"
        return dataset.images, dataset.labels

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield (x in [-1, 1] (B, 3, H, W) float32, y (B,) int64) on the device for batches start.. of epoch."""
        if not 0 <= start <= self.num_batches:
            raise ValueError(f"start must lie in [0, {self.num_batches}], got {start}")
        index, flip = self._shard(epoch)  # index stays on the host, where batches are gathered
        flip = flip.to(self.device)
        if not self.background:
            for b in range(start, self.num_batches):
                x, y = self._gather(index[b * self.batch_size:(b + 1) * self.batch_size].numpy())
                yield self._finish(x, flip, b), y
            return
        batches: queue.Queue = queue.Queue(maxsize=PREFETCH_BATCHES)
        done = threading.Event()
        worker = threading.Thread(target=self._produce, args=(index, start, batches, done), daemon=True,
                                  name="acgan-stream")
        worker.start()
        try:
            for b in range(start, self.num_batches):
                item = batches.get()
                if isinstance(item, BaseException):
                    raise item
                images, labels = item
                yield self._finish(images, flip, b), labels
        finally:  # also when the loop leaves early (a stop, a rollback): the thread must not outlive its epoch
            done.set()
            while worker.is_alive():  # drain, so a producer blocked on a full queue puts, sees done and ends
                with contextlib.suppress(queue.Empty):
                    batches.get(timeout=0.05)
            worker.join()

    def _produce(self, index: torch.Tensor, start: int, batches: queue.Queue, done: threading.Event) -> None:
        """The thread: gather each batch into pinned host memory and start its copy to the GPU."""
        try:
            for b in range(start, self.num_batches):
                x, y = self._gather(index[b * self.batch_size:(b + 1) * self.batch_size].numpy())
                cuda = self.device.type == "cuda"
                batches.put((x.to(self.device, non_blocking=cuda), y.to(self.device, non_blocking=cuda)))
                if done.is_set():
                    return
        except BaseException as exc:  # handed to the consumer, which raises it in the training loop
            if not done.is_set():
                batches.put(exc)


    def _gather(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) uint8 images and (B,) labels of rows idx, in new host tensors (pinned for a GPU)."""
        pin = self.device.type == "cuda"
        x = torch.empty((len(idx), *self.images.shape[1:]), dtype=torch.uint8, pin_memory=pin)
        y = torch.empty(len(idx), dtype=torch.int64, pin_memory=pin)
        # numpy and pread, not torch: plain copies, where a torch op in the GPU path's thread could start a
        # second OpenMP team beside the training step's
        if self.dataset.backing is not None:
            self.dataset.backing.read_rows(idx, x.numpy())  # from the page cache, mapping nothing
        else:
            np.take(self._images_np, idx, axis=0, out=x.numpy())
        np.take(self._labels_np, idx, out=y.numpy())
        return x, y


def resident_budget(device: torch.device) -> int:
    """Bytes of dataset --stream auto keeps on the device: a share of the GPU's memory, or of the host's RAM."""
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    else:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return int(total * RESIDENT_SHARE.get(device.type, RESIDENT_SHARE["cpu"]))


def make_sampler(dataset: ImageDataset, batch_size: int, *, device: torch.device, seed: int, rank: int = 0,
                 world_size: int = 1, stream: str = "auto") -> tuple[EpochSampler, str]:
    """The sampler --stream asks for (auto: by the dataset's size against resident_budget) and a line saying why."""
    from acgan.storage import human_bytes

    size, budget = dataset.images.numel(), resident_budget(device)
    streamed = stream == "on" or (stream == "auto" and size > budget)
    kind = StreamSampler if streamed else EpochSampler
    sampler = kind(dataset, batch_size, device=device, seed=seed, rank=rank, world_size=world_size)
    source = "its prepared file" if dataset.backing is not None else "host memory"
    why = (f"--stream {stream}" if stream != "auto" else
           f"{'over' if streamed else 'within'} the {human_bytes(budget)} budget on {device.type}, "
           f"{RESIDENT_SHARE.get(device.type, RESIDENT_SHARE['cpu']):.0%} of its memory")
    where = f"streamed from {source}" if streamed else f"resident on {device}"
    return sampler, f"data: {len(dataset):,} images, {human_bytes(size)}, {where} ({why})"
