"""The feed-forward block: column-parallel expansion, tanh-GELU, row-parallel projection (checkpointed on its own
under selective recompute of ``"mlp"``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_config import TransformerConfig
from torch.utils.checkpoint import checkpoint

from pose_mcore.config.base import selective_recompute


@dataclass
class MLPSubmodules:
    linear_fc1: ModuleSpec | type
    linear_fc2: ModuleSpec | type


class MLP(MegatronModule):
    """``fc2(gelu_tanh(fc1(x)))`` with ``fc1`` split over its outputs and ``fc2`` over its inputs."""

    def __init__(self, config: TransformerConfig, submodules: MLPSubmodules) -> None:
        super().__init__(config)
        self.linear_fc1 = build_module(submodules.linear_fc1, config.hidden_size, config.ffn_hidden_size,
                                       config=config, init_method=config.init_method, bias=True,
                                       gather_output=False, skip_bias_add=False, is_expert=False)
        self.linear_fc2 = build_module(submodules.linear_fc2, config.ffn_hidden_size, config.hidden_size,
                                       config=config, init_method=config.output_layer_init_method, bias=True,
                                       input_is_parallel=True, skip_bias_add=False, is_expert=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if selective_recompute(self.config, "mlp"):  # keeps the input only; the 4x-wide hidden is recomputed
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_fc2(F.gelu(self.linear_fc1(x)[0], approximate="tanh"))[0]
