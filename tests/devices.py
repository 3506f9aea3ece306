"""Where tests compute: this process's device (CUDA when present, as in training), shared by the
pytest process and the scripts that tests/dist runs under torchrun."""

from __future__ import annotations

from typing import Any

import torch

from pose_mcore.parallel.state import run_device


def to_device(value: Any, device: torch.device | None = None) -> Any:
    """``value`` (a tensor, or a dict / list / tuple of them) on ``device`` (default: this process's)."""
    device = run_device() if device is None else device
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(to_device(v, device) for v in value)
    return value


def seeded_randn(shape: tuple[int, ...] | torch.Size, seed: int, device: torch.device | None = None) -> torch.Tensor:
    """Standard normal numbers drawn on the CPU (the same on every machine), placed on ``device``."""
    return to_device(torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed)), device)
