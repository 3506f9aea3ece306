"""The one place that patches torch and megatron-core, and only when CUDA is absent.

megatron-core 0.16 assumes CUDA in two places that a CPU (gloo) run reaches:

1. ``torch.cuda.current_device()`` names the device of the buffers that sequence parallelism
   gathers into and reduce-scatters out of (``GlobalMemoryBuffer``, ``tensor_parallel.mappings``,
   ``LinearWithGradAccumulationAndAsyncCommunication``) and of GPU weight initialisation. On a
   machine without CUDA that call raises, so :func:`apply_cpu_compat` makes it return the CPU
   device: the buffers become CPU tensors and nothing else changes (code that called it would
   otherwise have failed).
2. The model-parallel RNG tracker (``get_cuda_rng_tracker``, ``model_parallel_cuda_manual_seed``)
   saves, seeds and restores the CUDA generator. :class:`CpuRNGStatesTracker` does the same with
   the CPU generator, and is installed as the tracker class megatron-core instantiates, so seeding
   and ``fork()`` behave as on a GPU.

Nothing is patched when CUDA is available, and applying the patches twice is a no-op.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from megatron.core.tensor_parallel import random as mcore_random

_APPLIED = False


class CpuRNGStatesTracker(mcore_random.CudaRNGStatesTracker):
    """megatron-core's RNG states tracker, keeping named states of the CPU generator."""

    def add(self, name: str, seed: int) -> None:
        """Create a named generator state seeded with ``seed`` (the global state is left as it was)."""
        self._is_initialized = True
        if seed in self.seeds_:
            raise ValueError(f"seed {seed} already exists in the RNG tracker")
        if name in self.states_:
            raise ValueError(f"RNG state {name!r} already exists in the RNG tracker")
        self.seeds_.add(seed)
        original = torch.get_rng_state()
        torch.manual_seed(seed)
        self.states_[name] = torch.get_rng_state()
        torch.set_rng_state(original)

    @contextlib.contextmanager
    def fork(self, name: str = mcore_random._MODEL_PARALLEL_RNG_TRACKER_NAME) -> Iterator[None]:
        """Run the body with the named generator state, then restore the previous state."""
        if name not in self.states_:
            raise ValueError(f"RNG state {name!r} was not added to the RNG tracker")
        original = torch.get_rng_state()
        torch.set_rng_state(self.states_[name])
        try:
            yield
        finally:
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(original)


def _cpu_device() -> torch.device:
    return torch.device("cpu")


def apply_cpu_compat() -> bool:
    """Apply the CPU patches if CUDA is absent; return whether they are in force."""
    global _APPLIED
    if torch.cuda.is_available():
        return False
    if not _APPLIED:
        torch.cuda.current_device = _cpu_device
        mcore_random.CudaRNGStatesTracker = CpuRNGStatesTracker
        mcore_random.initialize_rng_tracker(force_reset=True)
        _APPLIED = True
    return True


@contextlib.contextmanager
def cpu_autocast_backward(enabled: bool = True) -> Iterator[None]:
    """megatron-core's linear backward re-enters autocast through ``custom_bwd`` on CUDA only; on the CPU
    (bf16 tests, the memory model's bf16 traces) this makes it do the same, so that its gradients have the
    dtypes they have on a GPU. Does nothing with CUDA or when not ``enabled``."""
    from megatron.core.tensor_parallel import layers

    classes = (layers.LinearWithGradAccumulationAndAsyncCommunication, layers.LinearWithFrozenWeight)
    originals = {cls: cls.__dict__["backward"] for cls in classes}
    if enabled and not torch.cuda.is_available():
        for cls in classes:
            def backward(ctx: object, *grads: torch.Tensor, _orig: object = originals[cls]) -> object:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    return _orig.__func__(ctx, *grads)
            cls.backward = staticmethod(backward)
    try:
        yield
    finally:
        for cls, f in originals.items():
            cls.backward = f
