"""Per-rank memory of a DiT training step, traced rather than estimated by hand.

The real model code runs on fake tensors (``torch._subclasses.FakeTensorMode``: shapes, dtypes and
aliasing, no storage) under torch's own tracker (``torch.distributed._tools.mem_tracker.MemTracker``,
a dispatch mode that counts the bytes of live storages by kind: parameters, gradients, activations,
temporaries). A tensor-parallel layout of the full-size architecture is traced in one CPU process on
a fake process group (``torch.testing._internal.distributed.fake_pg``: collectives return tensors
of the right shapes), so what is counted is what rank 0 of that layout holds.

The same tracker on real CPU tensors measures a real step with the same accounting (the bytes of
live tensor storages, allocator caching excluded); a test holds the trace equal to that measurement
on small configurations. Tracing a 14B model through every block costs minutes on the CPU;
:func:`step_memory` can instead trace two depths and extrapolate linearly in the number of blocks
(the blocks are identical, so parameters, gradients and the activations kept per block grow by the
same amount per block; a test checks it against a full trace at small sizes). It is an estimate: when
the moment of the peak moves with depth (forward at one block, end of backward at sixty) the
extrapolated peak is too low, so it is never reported below parameters + gradients.

Not traced (explicit terms a caller adds): allocator fragmentation and caching, NCCL buffers, CUDA
context and kernel workspaces.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

from pose_mcore.config.base import RECOMPUTE_EVERY_BLOCK, VideoDiTConfig
from pose_mcore.models.registry import family_of_config
from pose_mcore.parallel.state import apply_cpu_compat

KINDS = ("params", "grads", "activations", "temporaries")
_TRACKER_KINDS = {"Parameter": "params", "Gradient": "grads", "Activation": "activations", "Temp": "temporaries"}


@dataclass(frozen=True)
class StepMemory:
    """Bytes per kind at the step's peak on one rank, and the peak itself."""

    params: int
    grads: int
    activations: int
    temporaries: int
    total: int

    def gib(self) -> dict[str, float]:
        return {k: getattr(self, k) / 2**30 for k in (*KINDS, "total")}


@contextlib.contextmanager
def fake_world(tensor_parallel_size: int, world_size: int | None = None) -> Iterator[None]:
    """megatron-core's parallel state over a fake process group of ``world_size`` ranks (this process is
    rank 0), for tracing a layout without the machines; restores nothing it did not create."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized() or parallel_state.model_parallel_is_initialized():
        raise RuntimeError("fake_world needs a process without torch.distributed initialised")
    apply_cpu_compat()
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world_size or tensor_parallel_size)
    try:
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tensor_parallel_size,
                                                 create_gloo_process_groups=False)
        tensor_parallel.model_parallel_cuda_manual_seed(1234)
        yield
    finally:
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()


def model_inputs(cfg: VideoDiTConfig, batch: int, frames: int, height: int, width: int, text_len: int = 512,
                 dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random inputs of a model's forward for a latent video of ``frames x height x width`` (the
    shapes real pipelines use: 512 text tokens, CLIP's 257 image tokens for Wan I2V)."""
    name = family_of_config(cfg).name
    latents = torch.randn(batch, cfg.in_channels, frames, height, width, dtype=dtype)
    text = torch.randn(batch, text_len, cfg.text_dim, dtype=dtype)
    t = torch.full((batch,), 500.0)
    if name == "wan":
        out = {"hidden_states": latents, "timestep": t, "encoder_hidden_states": text}
        if cfg.image_dim is not None:
            out["encoder_hidden_states_image"] = torch.randn(batch, 257, cfg.image_dim, dtype=dtype)
        return out
    out = {"hidden_states": latents, "timestep": t, "encoder_hidden_states": text,
           "encoder_attention_mask": torch.ones(batch, text_len, dtype=torch.long),
           "pooled_projections": torch.randn(batch, cfg.pooled_dim, dtype=dtype)}
    if cfg.guidance_embeds:
        out["guidance"] = torch.full((batch,), 6000.0)
    return out


def trace(build: Callable[[], torch.nn.Module], make_inputs: Callable[[], dict[str, torch.Tensor]],
          fake: bool = True) -> StepMemory:
    """Peak live bytes of one forward and backward (loss: mean square of the output) of the model that
    ``build`` makes, every parameter trainable: on fake tensors (``fake=True``) or real ones."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.distributed._tools.mem_tracker import MemTracker

    tracker = MemTracker()
    # megatron-core keeps the sequence-parallel all-gather buffer between calls: a fresh one per trace, so
    # that it is allocated (and counted) inside this trace and never belongs to another trace's fake mode.
    parallel_state.destroy_global_memory_buffer()
    parallel_state._set_global_memory_buffer()
    with FakeTensorMode() if fake else contextlib.nullcontext():
        model = build()
        inputs = make_inputs()
        tracker.track_external(model)
        with tracker:
            model(**inputs).sample.float().square().mean().backward()
    (peak,) = tracker.get_tracker_snapshot("peak").values()
    by_kind = {_TRACKER_KINDS.get(str(k.value) if hasattr(k, "value") else str(k)): v for k, v in peak.items()}
    return StepMemory(*(by_kind.get(k, 0) for k in KINDS), total=peak["Total"])


def _build(cfg: VideoDiTConfig, dtype: torch.dtype) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        before = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # torch's own layers (the patch embedding) in the step's dtype
        try:
            return family_of_config(cfg).model_class(cfg)
        finally:
            torch.set_default_dtype(before)
    return build


def step_memory(cfg: VideoDiTConfig, batch: int, frames: int, height: int, width: int, recompute: bool = True,
                dtype: torch.dtype = torch.bfloat16, extrapolate: bool = True) -> StepMemory:
    """Rank 0's peak bytes for one forward and backward of the model of ``cfg`` (its TP size; the
    process group must exist, e.g. :func:`fake_world`), weights and activations in ``dtype``, every
    block recomputed in backward if ``recompute``. ``extrapolate``: trace with one block of each kind,
    then with two of one kind at a time, and extend linearly to the model's depth (else trace it whole)."""
    extra = dict(RECOMPUTE_EVERY_BLOCK) if recompute else {}
    depth_fields = [f for f in ("num_layers", "num_single_layers") if hasattr(cfg, f)]

    def at(**depths: int) -> StepMemory:
        c = dataclasses.replace(cfg, params_dtype=dtype, **extra, **depths)
        return trace(_build(c, dtype), lambda: model_inputs(c, batch, frames, height, width, dtype=dtype))

    if not extrapolate:
        return at()
    ones = {f: 1 for f in depth_fields}
    base = at(**ones)
    values = {k: float(getattr(base, k)) for k in (*KINDS, "total")}
    for f in depth_fields:
        more = at(**{**ones, f: 2})
        for k in values:
            values[k] += (getattr(cfg, f) - 1) * (getattr(more, k) - getattr(base, k))
    # The peak of a shallow trace can sit in the forward while the deep model's sits at the end of backward
    # (the moment differs, so the extrapolated sum can fall short): the step ends holding every parameter
    # and its gradient, a lower bound of the peak.
    values["total"] = max(values["total"], 2 * values["params"])
    return StepMemory(*(math.ceil(values[k]) for k in (*KINDS, "total")))
