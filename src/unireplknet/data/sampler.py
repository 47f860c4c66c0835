"""A distributed sampler that can start in the middle of an epoch, for any world size.

Every rank draws the same global permutation of the dataset for an epoch (seeded by ``seed + epoch``),
drops the ``start`` samples already consumed before a resume, and takes every ``world_size``-th of the
rest. Because the position is counted in global samples, a run checkpointed with 4 processes resumes
with 2 (or 1) at exactly the next unseen sample.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ResumableDistributedSampler(Sampler[int]):
    """Shards a (shuffled) epoch across ranks; ``set_epoch(epoch, start)`` skips consumed samples.

    With ``pad=True`` (training) each rank gets the same number of indices (some repeated at the end)
    so collective ops stay in step; with ``pad=False`` (evaluation) every sample is seen exactly once.
    """

    def __init__(self, num_samples: int, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 seed: int = 0, pad: bool = True) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        self.n = num_samples
        self.rank, self.world_size = rank, world_size
        self.shuffle, self.seed, self.pad = shuffle, seed, pad
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and skip its first ``start`` global samples."""
        self.epoch, self.start = epoch, max(0, min(start, self.n))

    def global_order(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            return torch.randperm(self.n, generator=g).tolist()
        return list(range(self.n))

    def __len__(self) -> int:
        remaining = self.n - self.start
        if self.pad:
            return math.ceil(remaining / self.world_size)
        return len(range(self.rank, remaining, self.world_size))

    def __iter__(self) -> Iterator[int]:
        order = self.global_order()[self.start:]
        if self.pad and order:
            total = math.ceil(len(order) / self.world_size) * self.world_size
            while len(order) < total:
                order = order + order[: total - len(order)]
        return iter(order[self.rank::self.world_size])
