"""Where each op runs: the Triton kernel on CUDA, the same kernel under Triton's interpreter on the CPU
when ``TRITON_INTERPRET=1``, and the torch reference otherwise (and on fake tensors, which hold no data).
Importing this launches nothing.

Triton reads ``TRITON_INTERPRET`` when a kernel is defined, so set it before importing pose_kernels.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch._subclasses.fake_tensor import FakeTensor

HAVE_TRITON = importlib.util.find_spec("triton") is not None
BACKENDS = ("triton", "interpret", "reference")


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def select_backend(tensor: torch.Tensor, requested: str | None = None) -> str:
    """The backend for an op on ``tensor``: ``requested`` if given (checked), else the default above."""
    if requested is not None:
        if requested not in BACKENDS:
            raise ValueError(f"backend={requested!r} must be one of {BACKENDS}")
        if requested == "triton" and not (HAVE_TRITON and tensor.is_cuda and not interpreting()):
            raise RuntimeError("backend='triton' needs triton and CUDA tensors (and TRITON_INTERPRET unset)")
        if requested == "interpret" and not (HAVE_TRITON and interpreting() and not tensor.is_cuda):
            raise RuntimeError("backend='interpret' needs triton, CPU tensors and TRITON_INTERPRET=1 set before import")
        return requested
    if isinstance(tensor, FakeTensor):  # a memory trace (pose_mcore's memory model): no data for a kernel to read
        return "reference"
    if HAVE_TRITON and interpreting() and not tensor.is_cuda:
        return "interpret"
    if HAVE_TRITON and tensor.is_cuda and not interpreting():
        return "triton"
    return "reference"


def check_float(name: str, t: torch.Tensor) -> None:
    """Reject dtypes the kernels do not take, naming the tensor."""
    if t.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"{name} must be float32, float16 or bfloat16; got {t.dtype} with shape {tuple(t.shape)}")


MAX_GRID = (2**31 - 1, 65535, 65535)
"""CUDA's limits on the number of programs (thread blocks) along grid axes 0, 1 and 2."""


def check_grid(grid: tuple[int, ...]) -> tuple[int, ...]:
    """Return ``grid`` if every axis is within CUDA's limit, else raise naming the axis (a launch past
    the limit fails with an opaque 'invalid argument')."""
    for axis, (count, limit) in enumerate(zip(grid, MAX_GRID, strict=False)):
        if count > limit:
            raise ValueError(f"kernel grid {grid}: axis {axis} has {count} programs, more than CUDA's {limit}")
    return grid
