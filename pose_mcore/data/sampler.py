"""Deterministic, resumable global batches over the data-parallel ranks and micro-batches.

Global batch ``i`` of the run is a fixed function of the seed and ``i``: each epoch is a seeded
permutation, cut into global batches. Data-parallel rank ``r`` takes the ``r``-th contiguous share of
each, split into ``accumulation`` micro-batches; every sample carries ``sample_index``, its position in
the global batch, from which its random draws are made (:mod:`pose_mcore.pose.draws`). Resuming at
position ``i`` gives the same batches as an uninterrupted run.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset, default_collate


class BatchStream:
    def __init__(self, dataset: Dataset, micro_batch_size: int, accumulation: int, seed: int, dp_rank: int = 0,
                 dp_size: int = 1) -> None:
        self.micro, self.accumulation = micro_batch_size, accumulation
        self.global_batch = micro_batch_size * accumulation * dp_size
        if len(dataset) < self.global_batch:
            raise ValueError(f"dataset of {len(dataset)} samples is smaller than one global batch "
                             f"({micro_batch_size} x {accumulation} micro-batches x {dp_size} data-parallel ranks)")
        self.dataset, self.seed = dataset, seed
        self.dp_rank = dp_rank
        self.position = 0
        self.per_epoch = len(dataset) // self.global_batch

    def _indices(self, position: int) -> list[int]:
        epoch, within = divmod(position, self.per_epoch)
        order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.seed + epoch))
        share = self.micro * self.accumulation
        start = within * self.global_batch + self.dp_rank * share
        return order[start:start + share].tolist()

    def next(self) -> list[dict[str, torch.Tensor]]:
        """This rank's micro-batches of the next global batch."""
        indices = self._indices(self.position)
        first = self.dp_rank * self.micro * self.accumulation
        self.position += 1
        out = []
        for m in range(self.accumulation):
            batch = default_collate([self.dataset[i] for i in indices[m * self.micro:(m + 1) * self.micro]])
            batch["sample_index"] = torch.arange(first + m * self.micro, first + (m + 1) * self.micro)
            out.append(batch)
        return out
