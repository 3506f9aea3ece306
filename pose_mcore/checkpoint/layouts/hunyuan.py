"""HunyuanVideo parameter layouts as conversion rules into pose_mcore's own names.

``DIFFUSERS``: diffusers' ``HunyuanVideoTransformer3DModel``, whose single-stream blocks keep
``attn.to_q``, ``attn.to_k``, ``attn.to_v`` and ``proj_mlp`` apart (pose_mcore fuses them into
``attention_mlp.linear_fc1`` as [q | k | v | mlp]). ``ORIGINAL``: the official checkpoints
(``mp_rank_00_model_states.pt``), whose q, k, v are fused (``img_attn_qkv``, ``self_attn_qkv``),
whose single-stream ``linear1`` is already pose_mcore's layout, and whose final AdaLN holds
(shift, scale) where diffusers and pose_mcore hold (scale, shift).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from pose_mcore.checkpoint.layouts.rules import Rule, apply_rules, concat, invert, rename, split_equal
from pose_mcore.config.hunyuan import HunyuanConfig

_D = "transformer_blocks.{i}."
_S = "single_transformer_blocks.{i}."
_R = "context_embedder.token_refiner.refiner_blocks.{i}."
_CTX = "context_embedder.time_text_embed."
_OD, _OS, _OR = "double_blocks.{i}.", "single_blocks.{i}.", "context_refiner.blocks.{i}."


def _single_sizes(cfg: HunyuanConfig) -> list[int]:
    return [cfg.hidden_size] * 3 + [cfg.ffn_hidden_size]


def _swap_halves(tensors: list[torch.Tensor], cfg: object) -> list[torch.Tensor]:
    first, second = tensors[0].chunk(2)
    return [torch.cat([second, first])]


REFINER_DIFFUSERS: list[Rule] = [
    rename(_CTX + "timestep_embedder.linear_{j}.{p}", "context_refiner.time_embedder.linear_{j}.{p}"),
    rename(_CTX + "text_embedder.linear_{j}.{p}", "context_refiner.pooled_embedder.linear_{j}.{p}"),
    rename("context_embedder.proj_in.{p}", "context_refiner.proj_in.{p}"),
    rename(_R + "norm1.{p}", _OR + "norm1.{p}"),
    rename(_R + "norm2.{p}", _OR + "norm2.{p}"),
    rename(_R + "attn.to_q.{p}", _OR + "linear_q.{p}"),
    rename(_R + "attn.to_k.{p}", _OR + "linear_k.{p}"),
    rename(_R + "attn.to_v.{p}", _OR + "linear_v.{p}"),
    rename(_R + "attn.to_out.0.{p}", _OR + "linear_proj.{p}"),
    rename(_R + "ff.net.0.proj.{p}", _OR + "mlp.linear_1.{p}"),
    rename(_R + "ff.net.2.{p}", _OR + "mlp.linear_2.{p}"),
    rename(_R + "norm_out.linear.{p}", _OR + "gates.{p}"),
]
"""The text token refiner (HunyuanVideo and HunyuanVideo-1.5), diffusers -> pose_mcore."""

DUAL_DIFFUSERS: list[Rule] = [
    rename(_D + "norm1.linear.{p}", _OD + "modulation.linear.{p}"),
    rename(_D + "norm1_context.linear.{p}", _OD + "modulation_ctx.linear.{p}"),
    rename(_D + "attn.to_q.{p}", _OD + "attention.linear_q.{p}"),
    rename(_D + "attn.to_k.{p}", _OD + "attention.linear_k.{p}"),
    rename(_D + "attn.to_v.{p}", _OD + "attention.linear_v.{p}"),
    rename(_D + "attn.to_out.0.{p}", _OD + "attention.linear_proj.{p}"),
    rename(_D + "attn.norm_q.{p}", _OD + "attention.q_norm.{p}"),
    rename(_D + "attn.norm_k.{p}", _OD + "attention.k_norm.{p}"),
    rename(_D + "attn.add_q_proj.{p}", _OD + "attention.linear_q_ctx.{p}"),
    rename(_D + "attn.add_k_proj.{p}", _OD + "attention.linear_k_ctx.{p}"),
    rename(_D + "attn.add_v_proj.{p}", _OD + "attention.linear_v_ctx.{p}"),
    rename(_D + "attn.to_add_out.{p}", _OD + "attention.linear_proj_ctx.{p}"),
    rename(_D + "attn.norm_added_q.{p}", _OD + "attention.q_norm_ctx.{p}"),
    rename(_D + "attn.norm_added_k.{p}", _OD + "attention.k_norm_ctx.{p}"),
    rename(_D + "ff.net.0.proj.{p}", _OD + "mlp.linear_fc1.{p}"),
    rename(_D + "ff.net.2.{p}", _OD + "mlp.linear_fc2.{p}"),
    rename(_D + "ff_context.net.0.proj.{p}", _OD + "mlp_ctx.linear_fc1.{p}"),
    rename(_D + "ff_context.net.2.{p}", _OD + "mlp_ctx.linear_fc2.{p}"),
]
"""The dual-stream blocks (HunyuanVideo and HunyuanVideo-1.5), diffusers -> pose_mcore."""

DIFFUSERS: list[Rule] = [
    rename("x_embedder.proj.{p}", "x_embedder.{p}"),
    rename("time_text_embed.timestep_embedder.linear_{j}.{p}", "time_embedder.linear_{j}.{p}"),
    rename("time_text_embed.text_embedder.linear_{j}.{p}", "pooled_embedder.linear_{j}.{p}"),
    rename("time_text_embed.guidance_embedder.linear_{j}.{p}", "guidance_embedder.linear_{j}.{p}"),
    *REFINER_DIFFUSERS,
    *DUAL_DIFFUSERS,
    rename(_S + "norm.linear.{p}", _OS + "modulation.linear.{p}"),
    rename(_S + "attn.norm_q.{p}", _OS + "attention_mlp.q_norm.{p}"),
    rename(_S + "attn.norm_k.{p}", _OS + "attention_mlp.k_norm.{p}"),
    concat([_S + "attn.to_q.{p}", _S + "attn.to_k.{p}", _S + "attn.to_v.{p}", _S + "proj_mlp.{p}"],
           _OS + "attention_mlp.linear_fc1.{p}", _single_sizes),
    rename(_S + "proj_out.{p}", _OS + "attention_mlp.linear_fc2.{p}"),
    rename("norm_out.linear.{p}", "out_modulation.linear.{p}"),
    rename("proj_out.{p}", "proj_out.{p}"),
]
"""diffusers' ``HunyuanVideoTransformer3DModel`` -> pose_mcore."""

_OI = "txt_in.individual_token_refiner.blocks.{i}."

REFINER_ORIGINAL: list[Rule] = [
    rename("txt_in.t_embedder.mlp.0.{p}", "context_refiner.time_embedder.linear_1.{p}"),
    rename("txt_in.t_embedder.mlp.2.{p}", "context_refiner.time_embedder.linear_2.{p}"),
    rename("txt_in.c_embedder.linear_{j}.{p}", "context_refiner.pooled_embedder.linear_{j}.{p}"),
    rename("txt_in.input_embedder.{p}", "context_refiner.proj_in.{p}"),
    rename(_OI + "norm1.{p}", _OR + "norm1.{p}"),
    rename(_OI + "norm2.{p}", _OR + "norm2.{p}"),
    split_equal(_OI + "self_attn_qkv.{p}", [_OR + "linear_q.{p}", _OR + "linear_k.{p}", _OR + "linear_v.{p}"]),
    rename(_OI + "self_attn_proj.{p}", _OR + "linear_proj.{p}"),
    rename(_OI + "mlp.fc1.{p}", _OR + "mlp.linear_1.{p}"),
    rename(_OI + "mlp.fc2.{p}", _OR + "mlp.linear_2.{p}"),
    rename(_OI + "adaLN_modulation.1.{p}", _OR + "gates.{p}"),
]
"""The text token refiner (HunyuanVideo and HunyuanVideo-1.5), official -> pose_mcore."""

DUAL_ORIGINAL_SHARED: list[Rule] = [
    rename(_OD + "img_mod.linear.{p}", _OD + "modulation.linear.{p}"),
    rename(_OD + "txt_mod.linear.{p}", _OD + "modulation_ctx.linear.{p}"),
    rename(_OD + "img_attn_q_norm.{p}", _OD + "attention.q_norm.{p}"),
    rename(_OD + "img_attn_k_norm.{p}", _OD + "attention.k_norm.{p}"),
    rename(_OD + "img_attn_proj.{p}", _OD + "attention.linear_proj.{p}"),
    rename(_OD + "txt_attn_q_norm.{p}", _OD + "attention.q_norm_ctx.{p}"),
    rename(_OD + "txt_attn_k_norm.{p}", _OD + "attention.k_norm_ctx.{p}"),
    rename(_OD + "txt_attn_proj.{p}", _OD + "attention.linear_proj_ctx.{p}"),
    rename(_OD + "img_mlp.fc1.{p}", _OD + "mlp.linear_fc1.{p}"),
    rename(_OD + "img_mlp.fc2.{p}", _OD + "mlp.linear_fc2.{p}"),
    rename(_OD + "txt_mlp.fc1.{p}", _OD + "mlp_ctx.linear_fc1.{p}"),
    rename(_OD + "txt_mlp.fc2.{p}", _OD + "mlp_ctx.linear_fc2.{p}"),
]
"""The dual-stream blocks' official names but their q, k, v projections (fused in HunyuanVideo, apart in
HunyuanVideo-1.5)."""

FINAL_ORIGINAL: list[Rule] = [
    Rule(("final_layer.adaLN_modulation.1.{p}",), ("out_modulation.linear.{p}",), _swap_halves, _swap_halves),
    rename("final_layer.linear.{p}", "proj_out.{p}"),
]
"""The official head, whose AdaLN holds (shift, scale) where diffusers and pose_mcore hold (scale, shift)."""

ORIGINAL: list[Rule] = [
    rename("img_in.proj.{p}", "x_embedder.{p}"),
    rename("time_in.mlp.0.{p}", "time_embedder.linear_1.{p}"),
    rename("time_in.mlp.2.{p}", "time_embedder.linear_2.{p}"),
    rename("vector_in.in_layer.{p}", "pooled_embedder.linear_1.{p}"),
    rename("vector_in.out_layer.{p}", "pooled_embedder.linear_2.{p}"),
    rename("guidance_in.mlp.0.{p}", "guidance_embedder.linear_1.{p}"),
    rename("guidance_in.mlp.2.{p}", "guidance_embedder.linear_2.{p}"),
    *REFINER_ORIGINAL,
    *DUAL_ORIGINAL_SHARED,
    split_equal(_OD + "img_attn_qkv.{p}", [_OD + f"attention.linear_{x}.{{p}}" for x in "qkv"]),
    split_equal(_OD + "txt_attn_qkv.{p}", [_OD + f"attention.linear_{x}_ctx.{{p}}" for x in "qkv"]),
    rename(_OS + "modulation.linear.{p}", _OS + "modulation.linear.{p}"),
    rename(_OS + "linear1.{p}", _OS + "attention_mlp.linear_fc1.{p}"),
    rename(_OS + "linear2.{p}", _OS + "attention_mlp.linear_fc2.{p}"),
    rename(_OS + "q_norm.{p}", _OS + "attention_mlp.q_norm.{p}"),
    rename(_OS + "k_norm.{p}", _OS + "attention_mlp.k_norm.{p}"),
    *FINAL_ORIGINAL,
]
"""The official HunyuanVideo checkpoints -> pose_mcore."""


def hunyuan_from_diffusers(state: Mapping[str, torch.Tensor], cfg: HunyuanConfig | None = None
                           ) -> dict[str, torch.Tensor]:
    """A diffusers HunyuanVideo state dict under pose_mcore's names, single-stream q/k/v/MLP fused."""
    return apply_rules(DIFFUSERS, state, cfg)


def hunyuan_to_diffusers(state: Mapping[str, torch.Tensor], cfg: HunyuanConfig) -> dict[str, torch.Tensor]:
    """A pose_mcore HunyuanVideo state dict under diffusers' names, ``linear_fc1`` split again."""
    return apply_rules(invert(DIFFUSERS), state, cfg)
