"""AdaLN modulation helpers: a learned table plus a timestep projection gives shifts, scales, gates.

Modulation tensors are sequence-first like the activations: ``[s, b, n, d]`` for per-token
timesteps or ``[1, b, n, d]`` for one timestep per sample.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import nn

from pose_mcore.parallel.sequence import without_sequence_parallel


def modulation_chunks(table: torch.Tensor, mod: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Split ``table [1, n, d] + mod [s|1, b, n, d]`` (in fp32) into ``n`` tensors ``[s|1, b, d]``."""
    return (table + mod.float()).unbind(dim=-2)


def modulate(norm: nn.LayerNorm, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``norm(x) * (1 + scale) + shift`` in fp32, returned in ``x``'s dtype, for a LayerNorm without affine
    parameters. Saves only ``x`` (in its own dtype), the row statistics and ``scale`` for backward, where
    autograd through the fp32 formula would keep two fp32 copies of the activations."""
    if norm.weight is not None or norm.bias is not None:
        raise ValueError("modulate: the LayerNorm must have no affine parameters (the modulation replaces them)")
    return _Modulate.apply(x, shift, scale, norm.eps)


class _Modulate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, eps: float) -> torch.Tensor:
        normed, mean, rstd = torch.native_layer_norm(x.float(), (x.shape[-1],), None, None, eps)
        ctx.save_for_backward(x, mean, rstd, scale)
        ctx.shift_shape, ctx.shift_dtype = shift.shape, shift.dtype
        return (normed * (1 + scale) + shift).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, mean, rstd, scale = ctx.saved_tensors
        xf, g = x.float(), grad.float()
        grad_shift = g.sum_to_size(ctx.shift_shape).to(ctx.shift_dtype) if ctx.needs_input_grad[1] else None
        grad_scale = None
        if ctx.needs_input_grad[2]:
            grad_scale = (g * ((xf - mean) * rstd)).sum_to_size(scale.shape).to(scale.dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.native_layer_norm_backward(g * (1 + scale), xf, (x.shape[-1],), mean, rstd, None,
                                                               None, [True, False, False])[0].to(x.dtype)
        return grad_x, grad_shift, grad_scale, None


def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """``x + y * gate`` in fp32 (the fp32 gate promotes ``y``; no fp32 copy of ``y`` is kept for backward),
    returned in ``x``'s dtype."""
    return (x.float() + y * gate).type_as(x)


class AdaLNModulation(MegatronModule):
    """``linear(silu(emb))`` split into ``n`` modulation vectors ``[1, b, d]`` (HunyuanVideo's AdaLN).

    The linear is column-parallel with a gathered output, so its ``d x n*d`` weight is split over
    the TP ranks instead of replicated; ``emb`` is replicated (not sequence-split).
    """

    def __init__(self, config: TransformerConfig, n: int, linear: type) -> None:
        super().__init__(config)
        self.n = n
        self.linear = linear(config.hidden_size, n * config.hidden_size, config=without_sequence_parallel(config),
                             init_method=config.init_method, bias=True, gather_output=True, skip_bias_add=False,
                             is_expert=False)

    def forward(self, emb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.linear(F.silu(emb))[0].unflatten(-1, (self.n, -1)).unsqueeze(0).unbind(dim=-2)


def by_segment(fn: Callable[..., torch.Tensor], n_first: int, tokens: tuple[torch.Tensor, ...],
               mods: tuple[torch.Tensor, ...], first_mods: tuple[torch.Tensor, ...] | None) -> torch.Tensor:
    """``fn(*tokens, *mods)``, except that the first ``n_first`` tokens use ``first_mods`` (HunyuanVideo-I2V's
    token replacement gives the clean first frame its own modulation).

    With ``first_mods`` the split is made even when ``n_first`` is 0 (a sequence-parallel rank whose
    shard holds no first-frame token), so every rank builds the same autograd graph: the backward,
    and the recomputation of checkpointed blocks, then run their collectives in the same order.
    """
    if first_mods is None:
        return fn(*tokens, *mods)
    head = fn(*(t[:n_first] for t in tokens), *first_mods)
    tail = fn(*(t[n_first:] for t in tokens), *mods)
    return torch.cat([head, tail], dim=0)
