"""Where tests compute: this process's device (CUDA when present, as in training), shared by the
pytest process and the scripts that tests/dist runs under torchrun. Importing it makes fp32 mean fp32 on a
GPU (no TF32 in matmuls or in convolutions such as the patch embedding), so tolerances hold on any device."""

from __future__ import annotations

from typing import Any

import torch

from pose_mcore.parallel.state import run_device

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


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
