"""Deterministic, resumable batches over the data-parallel ranks.

Batch ``i`` of the run is a fixed function of the seed and ``i``: each epoch is a seeded permutation,
and data-parallel rank ``r`` takes its slice of the global batch. Resuming at position ``i`` gives
the same batches as an uninterrupted run.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, default_collate


class BatchStream:
    def __init__(self, dataset: Dataset, batch_size: int, seed: int, dp_rank: int = 0, dp_size: int = 1) -> None:
        if len(dataset) < batch_size * dp_size:
            raise ValueError(f"dataset of {len(dataset)} samples is smaller than one global batch "
                             f"({batch_size} x {dp_size} data-parallel ranks)")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.position = 0
        self.per_epoch = len(dataset) // (batch_size * dp_size)

    def _indices(self, position: int) -> list[int]:
        epoch, within = divmod(position, self.per_epoch)
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.seed + epoch))
        start = (within * self.dp_size + self.dp_rank) * self.batch_size
        return order[start:start + self.batch_size].tolist()

    def next(self) -> dict[str, torch.Tensor]:
        batch = default_collate([self.dataset[i] for i in self._indices(self.position)])
        self.position += 1
        return batch
