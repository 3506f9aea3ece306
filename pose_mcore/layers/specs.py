"""ModuleSpecs of the shared layers in two flavours: megatron-core's local parallel linears (CPU and
GPU; :mod:`pose_mcore.layers.linear`) and transformer-engine's (GPU). The choice is made here and nowhere
else."""

from __future__ import annotations

import importlib.util

import torch
from megatron.core.transformer.spec_utils import ModuleSpec

from pose_mcore.layers.attention import (
    AttentionSubmodules,
    CrossAttention,
    FusedAttentionMLP,
    FusedAttentionMLPSubmodules,
    JointAttention,
    JointAttentionSubmodules,
    SelfAttention,
)
from pose_mcore.layers.linear import ColumnParallelLinear, RowParallelLinear
from pose_mcore.layers.mlp import MLP, MLPSubmodules
from pose_mcore.layers.norms import RMSNorm


def resolve_transformer_impl(requested: str) -> str:
    """'transformer_engine' when asked (or 'auto') and usable (installed, CUDA), else 'local'."""
    te_usable = torch.cuda.is_available() and importlib.util.find_spec("transformer_engine") is not None
    if requested == "transformer_engine" and not te_usable:
        raise RuntimeError("transformer_impl='transformer_engine' needs transformer-engine installed and CUDA")
    if requested == "transformer_engine" or (requested == "auto" and te_usable):
        return "transformer_engine"
    return "local"


def parallel_linears(impl: str) -> tuple[type, type]:
    """(column-parallel, row-parallel) linear classes of an implementation."""
    if impl == "transformer_engine":
        from megatron.core.extensions.transformer_engine import TEColumnParallelLinear, TERowParallelLinear

        return TEColumnParallelLinear, TERowParallelLinear
    return ColumnParallelLinear, RowParallelLinear


# RMSNorm over all heads (Wan): the statistics are reduced across the TP ranks that hold the heads.
ACROSS_HEADS_RMSNORM = ModuleSpec(module=RMSNorm, params={"across_tp_ranks": True})


def self_attention_spec(impl: str) -> ModuleSpec:
    col, row = parallel_linears(impl)
    norm = ACROSS_HEADS_RMSNORM
    return ModuleSpec(module=SelfAttention, submodules=AttentionSubmodules(
        linear_q=col, linear_k=col, linear_v=col, linear_proj=row, q_norm=norm, k_norm=norm))


def cross_attention_spec(impl: str, image_context: bool) -> ModuleSpec:
    col, row = parallel_linears(impl)
    norm = ACROSS_HEADS_RMSNORM
    return ModuleSpec(module=CrossAttention, params={"image_context": image_context}, submodules=AttentionSubmodules(
        linear_q=col, linear_k=col, linear_v=col, linear_proj=row, q_norm=norm, k_norm=norm,
        linear_k_img=col, linear_v_img=col, k_img_norm=norm))


def mlp_spec(impl: str) -> ModuleSpec:
    col, row = parallel_linears(impl)
    return ModuleSpec(module=MLP, submodules=MLPSubmodules(linear_fc1=col, linear_fc2=row))


def joint_attention_spec(impl: str) -> ModuleSpec:
    """HunyuanVideo dual-stream attention; q/k RMSNorm per head (replicated weight)."""
    col, row = parallel_linears(impl)
    return ModuleSpec(module=JointAttention, submodules=JointAttentionSubmodules(
        linear_q=col, linear_k=col, linear_v=col, linear_proj=row, q_norm=RMSNorm, k_norm=RMSNorm,
        linear_q_ctx=col, linear_k_ctx=col, linear_v_ctx=col, linear_proj_ctx=row, q_norm_ctx=RMSNorm,
        k_norm_ctx=RMSNorm))


def fused_attention_mlp_spec(impl: str) -> ModuleSpec:
    """HunyuanVideo single-stream body: fused q/k/v/MLP input linear, fused output linear."""
    col, row = parallel_linears(impl)
    return ModuleSpec(module=FusedAttentionMLP, submodules=FusedAttentionMLPSubmodules(
        linear_fc1=col, linear_fc2=row, q_norm=RMSNorm, k_norm=RMSNorm))
