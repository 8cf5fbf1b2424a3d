"""Training batches of similar length, in random order.

Padding each batch to its own longest row only pays when a batch's rows have similar lengths.
transformers' `LengthGroupedSampler` gets there by sorting each mega-batch from long to short, so the
model sees its batches in length order and, at the end of every mega-batch, only the shortest inputs:
on SST-2 that order cost about 2 points of accuracy (bench/train_speed.py). Here the batches are built
the same way and then shuffled, which keeps the padding savings and drops the order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

MEGA_BATCH_BATCHES = 50  # batches whose rows are sorted together: more means less padding, less mixing


class ShuffledLengthBatches(Sampler[int]):
    """Indices in batch-size runs of similar length; the runs in a seeded random order per epoch."""

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The Trainer calls this each epoch (also when resuming), so the order is reproducible."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        shuffled = torch.randperm(len(self.lengths), generator=generator).tolist()
        mega = MEGA_BATCH_BATCHES * self.batch_size
        full: list[list[int]] = []
        partial: list[list[int]] = []
        for start in range(0, len(shuffled), mega):
            rows = sorted(shuffled[start:start + mega], key=self.lengths.__getitem__, reverse=True)
            for first in range(0, len(rows), self.batch_size):
                batch = rows[first:first + self.batch_size]
                (full if len(batch) == self.batch_size else partial).append(batch)
        # A short batch anywhere but last would shift every later batch boundary of the DataLoader.
        for index in torch.randperm(len(full), generator=generator).tolist():
            yield from full[index]
        for batch in partial:
            yield from batch
