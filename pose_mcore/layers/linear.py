"""megatron-core's tensor-parallel linears, with the bias added in the activation's dtype, and one GEMM
with the bias fused when the layer is not split.

megatron-core adds the bias as ``output + bias``: under autocast the matmul gives bf16 and the fp32 bias
promotes the sum to fp32, so every layer after it (GELU, the next linear, which saves its input for
backward) holds fp32 activations: twice the memory of diffusers' ``nn.Linear``, whose bias is fused in
the bf16 matmul. Here the bias is cast to the output's dtype first. Layers whose output is gathered
(``gather_output=True``) keep megatron's order, since their bias is split like their outputs.

With one tensor-parallel rank there is nothing to split, scatter or reduce: the layer runs as
``F.linear`` (the GEMM with the bias in its epilogue, as transformer-engine's linear and diffusers' do),
the same values and gradients as megatron's path without its separate bias pass and no-op
communication functions. Two inputs keep megatron's path, where ``F.linear`` would save a copy for
backward: a non-contiguous input (a transposed view; ``F.linear`` saves it made contiguous) and weights
that autocast casts (fp32 weights under bf16 autocast, ``precision=amp``: ``F.linear`` saves the bf16
copy of every weight until backward, megatron's function casts again in backward). The parameters,
their initialisation and sharding metadata are megatron's either way; with more ranks megatron's
parallel path runs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from megatron.core import tensor_parallel
from megatron.core.utils import get_pg_size


def _add_bias(out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return out if bias is None else out + bias.to(out.dtype)


def _unsplit(layer: torch.nn.Module) -> bool:
    """Whether ``layer`` (a megatron parallel linear) is whole on this rank and needs no megatron-only
    feature (fused weight-gradient accumulation, deferred embedding gradients)."""
    config = layer.config
    return (get_pg_size(layer.tp_group) == 1 and not config.gradient_accumulation_fusion
            and not config.defer_embedding_wgrad_compute and not layer.explicit_expert_comm)


def _fusable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``F.linear`` saves nothing for backward that megatron's path does not: ``x`` contiguous and
    ``weight`` not cast by autocast."""
    device = x.device.type
    cast = torch.is_autocast_enabled(device) and weight.dtype != torch.get_autocast_dtype(device)
    return x.is_contiguous() and not cast


def _fused(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, returns_bias: bool
           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An unsplit layer's ``(output, bias)``: the bias in the GEMM, or returned for the caller to add."""
    return (F.linear(x, weight), bias) if returns_bias else (F.linear(x, weight, bias), None)


class ColumnParallelLinear(tensor_parallel.ColumnParallelLinear):
    """megatron-core's ``ColumnParallelLinear`` (same arguments and outputs), bias in the output dtype; one
    fused GEMM when unsplit."""

    def __init__(self, *args: Any, skip_bias_add: bool = False, gather_output: bool = False, **kwargs: Any) -> None:
        self.add_bias = not skip_bias_add and not gather_output
        self.returns_bias = skip_bias_add
        super().__init__(*args, skip_bias_add=skip_bias_add or self.add_bias, gather_output=gather_output, **kwargs)
        self.unsplit = _unsplit(self)

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None, **kwargs: Any
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        w = self.weight if weight is None else weight
        if self.unsplit and _fusable(x, w):
            return _fused(x, w, self.bias, self.returns_bias)
        out, bias = super().forward(x, weight, **kwargs)
        return (_add_bias(out, bias), None) if self.add_bias else (out, bias)


class RowParallelLinear(tensor_parallel.RowParallelLinear):
    """megatron-core's ``RowParallelLinear`` (same arguments and outputs), bias in the output dtype (added
    after the reduction, as megatron does); one fused GEMM when unsplit."""

    def __init__(self, *args: Any, skip_bias_add: bool = False, **kwargs: Any) -> None:
        self.add_bias = not skip_bias_add
        super().__init__(*args, skip_bias_add=True, **kwargs)
        self.unsplit = _unsplit(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.unsplit and _fusable(x, self.weight):
            return _fused(x, self.weight, self.bias, not self.add_bias)
        out, bias = super().forward(x)
        return (_add_bias(out, bias), None) if self.add_bias else (out, bias)
