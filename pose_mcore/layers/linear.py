"""megatron-core's tensor-parallel linears, with the bias added in the activation's dtype.

megatron-core adds the bias as ``output + bias``: under autocast the matmul gives bf16 and the fp32 bias
promotes the sum to fp32, so every layer after it (GELU, the next linear, which saves its input for
backward) holds fp32 activations: twice the memory of diffusers' ``nn.Linear``, whose bias is fused in
the bf16 matmul. Here the bias is cast to the output's dtype first. Layers whose output is gathered
(``gather_output=True``) keep megatron's order, since their bias is split like their outputs.
"""

from __future__ import annotations

from typing import Any

import torch
from megatron.core import tensor_parallel


def _add_bias(out: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return out if bias is None else out + bias.to(out.dtype)


class ColumnParallelLinear(tensor_parallel.ColumnParallelLinear):
    """megatron-core's ``ColumnParallelLinear`` (same arguments and outputs), bias in the output dtype."""

    def __init__(self, *args: Any, skip_bias_add: bool = False, gather_output: bool = False, **kwargs: Any) -> None:
        self.add_bias = not skip_bias_add and not gather_output
        super().__init__(*args, skip_bias_add=skip_bias_add or self.add_bias, gather_output=gather_output, **kwargs)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, bias = super().forward(x, *args, **kwargs)
        return (_add_bias(out, bias), None) if self.add_bias else (out, bias)


class RowParallelLinear(tensor_parallel.RowParallelLinear):
    """megatron-core's ``RowParallelLinear`` (same arguments and outputs), bias in the output dtype (added
    after the reduction, as megatron does)."""

    def __init__(self, *args: Any, skip_bias_add: bool = False, **kwargs: Any) -> None:
        self.add_bias = not skip_bias_add
        super().__init__(*args, skip_bias_add=True, **kwargs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, bias = super().forward(x)
        return (_add_bias(out, bias), None) if self.add_bias else (out, bias)
