"""Random numbers that belong to a sample, not to a rank.

Every random draw of a training step (noise, timesteps, text dropout, the R1 perturbation seed) is a
function of the phase's seed, the step, the sub-step that draws it, the draw's place in that sub-step
and the sample's position in the global batch. A sample therefore gets the same numbers whichever
data-parallel rank and micro-batch it lands on, so TP x DP with gradient accumulation computes the
same update as one rank with the whole batch, and resuming at a step redraws exactly what an
uninterrupted run drew.
"""

from __future__ import annotations

import hashlib

import torch

from pose_mcore.diffusion.flow import shift_time


def mix_seed(*parts: int | str) -> int:
    """A 63-bit seed from ``parts`` (stable across processes and Python versions, unlike ``hash``)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class SampleDraws:
    """The draws of one sub-step (``tag``) of step ``step`` for the samples at global-batch positions
    ``index [b]``; each call is the next draw of the sub-step."""

    def __init__(self, seed: int, step: int, tag: str, index: torch.Tensor, device: torch.device) -> None:
        self.key = (seed, step, tag)
        self.index = [int(i) for i in index]
        self.device = device
        self.count = 0

    def _generators(self) -> list[torch.Generator]:
        draw = self.count
        self.count += 1
        return [torch.Generator().manual_seed(mix_seed(*self.key, draw, i)) for i in self.index]

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like ``like [b, ...]``, one sample's share per generator."""
        return torch.stack([torch.randn(like.shape[1:], generator=g) for g in self._generators()]).to(like)

    def uniform(self) -> torch.Tensor:
        """One ``U[0, 1)`` number per sample ``[b]`` (on the CPU)."""
        return torch.stack([torch.rand((), generator=g) for g in self._generators()])

    def times(self, t_min: float, t_max: float, shift: float) -> torch.Tensor:
        """``t ~ U[t_min, t_max]``, then shifted, per sample ``[b]`` (on the device)."""
        return shift_time(t_min + (t_max - t_min) * self.uniform(), shift).to(self.device)

    def seeds(self) -> list[int]:
        """One integer seed per sample (for kernels that draw their own noise)."""
        return [int(torch.randint(2**31 - 1, (1,), generator=g)) for g in self._generators()]
