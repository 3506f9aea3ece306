"""Normalisations: an fp32 LayerNorm and an RMSNorm whose normalised dimension is split over TP ranks."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.tensor_parallel import set_tensor_model_parallel_attributes
from torch import nn


class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the activation dtype (as Wan and diffusers do)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension, in fp32.

    ``across_tp_ranks=True`` is for a dimension whose channels are split over the tensor-parallel
    ranks: Wan normalises q and k over all heads together (``rms_norm_across_heads``) while each TP
    rank holds only its heads' channels, so the sum of squares is all-reduced across the TP group
    (forward and backward) before dividing by the full size, and the weight is split like the
    channels. Otherwise (HunyuanVideo's per-head q/k norm) the weight is replicated; applied to this
    rank's heads only, its gradient is partial and is tagged ``tp_partial_grad`` so
    :func:`pose_mcore.parallel.sequence.finalize_tensor_parallel_grads` sums it over the TP ranks.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6, across_tp_ranks: bool = False) -> None:
        super().__init__()
        self.tp_size = parallel_state.get_tensor_model_parallel_world_size() if across_tp_ranks else 1
        if hidden_size % self.tp_size:
            raise ValueError(f"RMSNorm: hidden_size={hidden_size} must be divisible by the TP size {self.tp_size}")
        self.hidden_size = hidden_size
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size // self.tp_size))
        if across_tp_ranks:
            set_tensor_model_parallel_attributes(self.weight, True, 0, 1)
        else:
            self.weight.tp_partial_grad = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        group = parallel_state.get_tensor_model_parallel_group() if self.tp_size > 1 else None
        return _RMSNormFunction.apply(x, self.weight, self.hidden_size, self.eps, group)


class _RMSNormFunction(torch.autograd.Function):
    """``x * rsqrt(mean(x^2) + eps) * weight`` in fp32, returned in ``x``'s dtype, saving only ``x`` (in
    its own dtype) and the per-row ``rsqrt`` for backward: autograd through the fp32 formula would keep
    two fp32 copies of every q and k. ``group`` (or None) holds the other channels of each row: the
    sums over channels, forward and backward, are all-reduced over it."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, hidden_size: int, eps: float,
                group: dist.ProcessGroup | None) -> torch.Tensor:
        xf = x.float()
        sum_sq = xf.square().sum(dim=-1, keepdim=True)
        if group is not None:
            dist.all_reduce(sum_sq, group=group)
        rstd = torch.rsqrt(sum_sq / hidden_size + eps)
        ctx.save_for_backward(x, weight, rstd)
        ctx.hidden_size, ctx.group = hidden_size, group
        return (xf * rstd * weight.float()).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, rstd = ctx.saved_tensors
        xf, g = x.float(), grad.float()
        x_hat = xf * rstd
        grad_weight = (g * x_hat).reshape(-1, x.shape[-1]).sum(dim=0).to(weight.dtype)
        gw = g * weight.float()
        dot = (gw * x_hat).sum(dim=-1, keepdim=True)
        if ctx.group is not None:
            dist.all_reduce(dot, group=ctx.group)
        grad_x = rstd * (gw - x_hat * dot / ctx.hidden_size)
        return grad_x.to(x.dtype), grad_weight, None, None, None
