"""An accelerator for machines without one, to find tensors made on the wrong device: the run's device
becomes ``meta`` under torch's fake tensors (shapes, dtypes and devices, no data), and every op checks its
operands' devices as on CUDA (a 0-dim CPU tensor mixes with any device, as on CUDA). A module or tensor a
step makes on the CPU while the run's device is the accelerator then fails here the way it fails on a GPU
("Expected all tensors to be on the same device"), without a GPU.

What it stands in for: ``run_device()``, ``torch.cuda.current_device()`` (where megatron-core allocates its
sequence-parallel and DDP buffers) and moving modules (``module.to(device)`` replaces each fake parameter
and buffer by one on the accelerator, keeping its attributes; call it before optimisers hold them, as the
trainer does). What it cannot: autocast (no autocast for ``meta``: runs are fp32),
the Triton kernels (fake tensors take the torch references), host reads of values (``.item()`` reads 1, as
in the memory model's traces). Needs a process whose default device is the CPU and that has no CUDA.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from unittest import mock

import torch
from megatron.core import parallel_state
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from pose_mcore.evaluation.memory_model import _host_scalars, _in_place_data_parallel
from pose_mcore.parallel import state

DEVICE = torch.device("meta")
"""The emulated accelerator."""


def _target(args: tuple, kwargs: dict) -> tuple[torch.device | None, torch.dtype | None]:
    """The device and dtype of a ``.to(...)`` call's arguments."""
    device, dtype = kwargs.get("device"), kwargs.get("dtype")
    for a in args:
        if isinstance(a, str | torch.device):
            device = a
        elif isinstance(a, torch.dtype):
            dtype = a
        elif isinstance(a, torch.Tensor):
            device, dtype = a.device, a.dtype
    return (None if device is None else torch.device(device)), dtype


def _moved(t: torch.Tensor) -> torch.Tensor:
    """A module's parameter or buffer on :data:`DEVICE`, with its attributes (megatron-core's sharding marks)."""
    if not isinstance(t, FakeTensor):
        raise TypeError("emulated_accelerator moves fake tensors only: build modules inside it")
    moved = torch.ops.aten._to_copy(t.detach(), device=DEVICE)
    if isinstance(t, torch.nn.Parameter):
        moved = torch.nn.Parameter(moved, requires_grad=t.requires_grad)
    moved.__dict__.update({k: v for k, v in t.__dict__.items() if k not in moved.__dict__})  # not the fake device
    return moved


@contextlib.contextmanager
def emulated_accelerator() -> Iterator[torch.device]:
    """Run the body with :data:`DEVICE` as the run's device, on fake tensors; yields the device."""
    if torch.cuda.is_available():
        raise RuntimeError("emulated_accelerator stands in for a GPU on machines without one")
    module_to = torch.nn.Module.to

    def to(self: torch.nn.Module, *args: object, **kwargs: object) -> torch.nn.Module:
        device, dtype = _target(args, kwargs)
        if device != DEVICE:
            return module_to(self, *args, **kwargs)
        for m in self.modules():
            for table in (m._parameters, m._buffers):
                for key, t in table.items():
                    if t is not None and t.device != DEVICE:
                        table[key] = _moved(t)
        return self if dtype is None else module_to(self, dtype=dtype)

    def autocast(device_type: str, *args: object, enabled: bool = True, **kwargs: object) -> object:
        if device_type != DEVICE.type:
            return original_autocast(device_type, *args, enabled=enabled, **kwargs)
        if enabled:
            raise RuntimeError("emulated_accelerator has no autocast: run it in fp32")
        return contextlib.nullcontext()

    original_autocast, original_enabled = torch.autocast, torch.is_autocast_enabled

    def autocast_enabled(*args: object) -> bool:
        return False if args and args[0] in (DEVICE.type, DEVICE) else original_enabled(*args)

    importers = [m for m in list(sys.modules.values()) if getattr(m, "run_device", None) is state.run_device]
    # megatron-core keeps its sequence-parallel gather buffer between calls: a fresh one, made on DEVICE
    parallel_state.destroy_global_memory_buffer()
    parallel_state._set_global_memory_buffer()
    with contextlib.ExitStack() as stack:
        for m in importers:
            stack.enter_context(mock.patch.object(m, "run_device", lambda: DEVICE))
        stack.enter_context(mock.patch.object(torch.cuda, "current_device", lambda: DEVICE))
        stack.enter_context(mock.patch.object(torch.nn.Module, "to", to))
        stack.enter_context(mock.patch.object(torch, "autocast", autocast))
        stack.enter_context(mock.patch.object(torch, "is_autocast_enabled", autocast_enabled))
        # torch.tensor(..., device=DEVICE) makes a plain meta tensor even under fake tensors: let it in (a real
        # CPU tensor let in becomes a fake CPU tensor, still caught on the wrong device)
        stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        stack.enter_context(_host_scalars())
        stack.enter_context(_in_place_data_parallel())
        yield DEVICE
