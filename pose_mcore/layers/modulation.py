"""AdaLN modulation helpers: a learned table plus a timestep projection gives shifts, scales, gates.

Modulation tensors are sequence-first like the activations: ``[s, b, n, d]`` for per-token
timesteps or ``[1, b, n, d]`` for one timestep per sample.
"""

from __future__ import annotations

import torch
from torch import nn


def modulation_chunks(table: torch.Tensor, mod: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Split ``table [1, n, d] + mod [s|1, b, n, d]`` (in fp32) into ``n`` tensors ``[s|1, b, d]``."""
    return (table + mod.float()).unbind(dim=-2)


def modulate(norm: nn.Module, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``norm(x) * (1 + scale) + shift`` in fp32, returned in ``x``'s dtype."""
    return (norm(x.float()) * (1 + scale) + shift).type_as(x)


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``x + y * gate`` in fp32, returned in ``x``'s dtype."""
    return (x.float() + y.float() * gate).type_as(x)
