"""Sequence parallelism over the tensor-parallel ranks, in the Megatron sense.

Between blocks the video tokens (sequence-first, ``[s, b, h]``) are split over the TP ranks.
Column-parallel layers all-gather them and row-parallel layers reduce-scatter them (megatron-core
does both). This module handles what megatron-core leaves to the model: padding a token count
that does not divide by the TP size, entering and leaving the split region, and reducing the
gradients of replicated parameters that only saw this rank's tokens.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.tensor_parallel import gather_from_sequence_parallel_region, scatter_to_sequence_parallel_region
from megatron.core.transformer.transformer_config import TransformerConfig


def without_sequence_parallel(config: TransformerConfig) -> TransformerConfig:
    """A copy of ``config`` for layers fed replicated (not sequence-split) inputs, such as text."""
    if not config.sequence_parallel:
        return config
    return dataclasses.replace(config, sequence_parallel=False)


def pad_sequence(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad dim 0 of ``x`` up to a multiple of ``multiple``."""
    pad = -x.shape[0] % multiple
    if pad == 0:
        return x
    return F.pad(x, (0, 0) * (x.dim() - 1) + (0, pad))


def scatter_tokens(x: torch.Tensor) -> torch.Tensor:
    """Pad the full sequence ``[s, ...]`` to a multiple of the TP size and keep this rank's slice.

    The backward all-gathers, so parameters before the split receive whole gradients.
    """
    tp = parallel_state.get_tensor_model_parallel_world_size()
    return scatter_to_sequence_parallel_region(pad_sequence(x, tp))


def gather_tokens(x: torch.Tensor, length: int) -> torch.Tensor:
    """All-gather this rank's slice into the full sequence and strip the padding beyond ``length``.

    Used once the result is replicated (the model output): the backward keeps this rank's slice.
    """
    return gather_from_sequence_parallel_region(x, tensor_parallel_output_grad=False)[:length]


def summed_over(grad: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """``grad`` summed over the ranks of ``group``, in a new contiguous tensor: never ``grad`` in place (autograd may
    hand one gradient tensor to several inputs, the two operands of an addition) and whatever its strides
    (megatron-core's ``_reduce`` all-reduces ``grad.contiguous()`` and returns ``grad``: a non-contiguous gradient
    came back unreduced). Every backward here that sums a gradient over ranks does it through this."""
    grad = grad.clone(memory_format=torch.contiguous_format)
    dist.all_reduce(grad, group=group)
    return grad


class _BroadcastToTokens(torch.autograd.Function):
    """Identity forward; backward, the gradient summed over the TP ranks (:func:`summed_over`). Not megatron-core's
    ``copy_to_tensor_model_parallel_region``, which returned the gradient of a transposed view (the semantic
    head's per-head queries) unreduced."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return summed_over(grad, parallel_state.get_tensor_model_parallel_group())


def broadcast_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """Mark a replicated tensor that is about to act on this rank's tokens only (e.g. a timestep
    modulation): identity forward, all-reduce of its gradient across the TP ranks backward (whatever the
    gradient's strides)."""
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return x
    return _BroadcastToTokens.apply(x)


def mark_sequence_parallel(module: torch.nn.Module, enabled: bool) -> None:
    """Tag every parameter of ``module`` as replicated-but-seeing-a-shard (megatron's attribute)."""
    for p in module.parameters():
        p.sequence_parallel = enabled


def finalize_tensor_parallel_grads(model: torch.nn.Module) -> None:
    """Sum, across the TP ranks, the gradients that each rank only partly computes.

    These are replicated parameters tagged ``sequence_parallel`` (applied to this rank's token shard:
    norms, modulation tables, row-parallel biases, the output head; megatron's own tag) and those
    tagged ``tp_partial_grad`` (applied to this rank's heads only: per-head q/k norms). Acts on DDP's
    ``main_grad`` where the parameter has one (after its data-parallel reduction, as megatron-core's
    ``finalize_model_grads`` does), else on ``grad``.
    """
    if parallel_state.get_tensor_model_parallel_world_size() == 1:
        return
    grads = [getattr(p, "main_grad", p.grad) for p in model.parameters() if p.requires_grad and (
        getattr(p, "sequence_parallel", False) or getattr(p, "tp_partial_grad", False))]
    grads = [g for g in grads if g is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=parallel_state.get_tensor_model_parallel_group())
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
