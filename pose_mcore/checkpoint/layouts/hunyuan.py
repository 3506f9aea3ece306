"""HunyuanVideo parameter names and tensor layouts: diffusers' ``HunyuanVideoTransformer3DModel`` <->
pose_mcore's own.

Besides renames, the single-stream blocks differ in layout: diffusers keeps ``attn.to_q``,
``attn.to_k``, ``attn.to_v`` and ``proj_mlp`` separate; pose_mcore fuses them into
``attention_mlp.linear_fc1`` in the order [q | k | v | mlp] (the official checkpoints' ``linear1``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from pose_mcore.checkpoint.layouts.keymap import KeyMap

_DUAL = "transformer_blocks.{i}."
_OURS_DUAL = "double_blocks.{i}."
_REF = "context_embedder.token_refiner.refiner_blocks.{i}."
_OURS_REF = "context_refiner.blocks.{i}."
_CTX = "context_embedder.time_text_embed."

DIFFUSERS = KeyMap((
    ("x_embedder.proj.{p}", "x_embedder.{p}"),
    ("time_text_embed.timestep_embedder.linear_{j}.{p}", "time_embedder.linear_{j}.{p}"),
    ("time_text_embed.text_embedder.linear_{j}.{p}", "pooled_embedder.linear_{j}.{p}"),
    ("time_text_embed.guidance_embedder.linear_{j}.{p}", "guidance_embedder.linear_{j}.{p}"),
    (_CTX + "timestep_embedder.linear_{j}.{p}", "context_refiner.time_embedder.linear_{j}.{p}"),
    (_CTX + "text_embedder.linear_{j}.{p}", "context_refiner.pooled_embedder.linear_{j}.{p}"),
    ("context_embedder.proj_in.{p}", "context_refiner.proj_in.{p}"),
    (_REF + "norm1.{p}", _OURS_REF + "norm1.{p}"),
    (_REF + "norm2.{p}", _OURS_REF + "norm2.{p}"),
    (_REF + "attn.to_q.{p}", _OURS_REF + "linear_q.{p}"),
    (_REF + "attn.to_k.{p}", _OURS_REF + "linear_k.{p}"),
    (_REF + "attn.to_v.{p}", _OURS_REF + "linear_v.{p}"),
    (_REF + "attn.to_out.0.{p}", _OURS_REF + "linear_proj.{p}"),
    (_REF + "ff.net.0.proj.{p}", _OURS_REF + "mlp.linear_1.{p}"),
    (_REF + "ff.net.2.{p}", _OURS_REF + "mlp.linear_2.{p}"),
    (_REF + "norm_out.linear.{p}", _OURS_REF + "gates.{p}"),
    (_DUAL + "norm1.linear.{p}", _OURS_DUAL + "modulation.linear.{p}"),
    (_DUAL + "norm1_context.linear.{p}", _OURS_DUAL + "modulation_ctx.linear.{p}"),
    (_DUAL + "attn.to_q.{p}", _OURS_DUAL + "attention.linear_q.{p}"),
    (_DUAL + "attn.to_k.{p}", _OURS_DUAL + "attention.linear_k.{p}"),
    (_DUAL + "attn.to_v.{p}", _OURS_DUAL + "attention.linear_v.{p}"),
    (_DUAL + "attn.to_out.0.{p}", _OURS_DUAL + "attention.linear_proj.{p}"),
    (_DUAL + "attn.norm_q.{p}", _OURS_DUAL + "attention.q_norm.{p}"),
    (_DUAL + "attn.norm_k.{p}", _OURS_DUAL + "attention.k_norm.{p}"),
    (_DUAL + "attn.add_q_proj.{p}", _OURS_DUAL + "attention.linear_q_ctx.{p}"),
    (_DUAL + "attn.add_k_proj.{p}", _OURS_DUAL + "attention.linear_k_ctx.{p}"),
    (_DUAL + "attn.add_v_proj.{p}", _OURS_DUAL + "attention.linear_v_ctx.{p}"),
    (_DUAL + "attn.to_add_out.{p}", _OURS_DUAL + "attention.linear_proj_ctx.{p}"),
    (_DUAL + "attn.norm_added_q.{p}", _OURS_DUAL + "attention.q_norm_ctx.{p}"),
    (_DUAL + "attn.norm_added_k.{p}", _OURS_DUAL + "attention.k_norm_ctx.{p}"),
    (_DUAL + "ff.net.0.proj.{p}", _OURS_DUAL + "mlp.linear_fc1.{p}"),
    (_DUAL + "ff.net.2.{p}", _OURS_DUAL + "mlp.linear_fc2.{p}"),
    (_DUAL + "ff_context.net.0.proj.{p}", _OURS_DUAL + "mlp_ctx.linear_fc1.{p}"),
    (_DUAL + "ff_context.net.2.{p}", _OURS_DUAL + "mlp_ctx.linear_fc2.{p}"),
    ("single_transformer_blocks.{i}.norm.linear.{p}", "single_blocks.{i}.modulation.linear.{p}"),
    ("single_transformer_blocks.{i}.attn.norm_q.{p}", "single_blocks.{i}.attention_mlp.q_norm.{p}"),
    ("single_transformer_blocks.{i}.attn.norm_k.{p}", "single_blocks.{i}.attention_mlp.k_norm.{p}"),
    ("single_transformer_blocks.{i}.proj_out.{p}", "single_blocks.{i}.attention_mlp.linear_fc2.{p}"),
    ("norm_out.linear.{p}", "out_modulation.linear.{p}"),
    ("proj_out.{p}", "proj_out.{p}"),
))
"""Renames between diffusers and pose_mcore; the fused single-stream input linear is handled apart."""

_FUSED_PARTS = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")
_DIFFUSERS_FUSED = re.compile(r"^single_transformer_blocks\.(\d+)\.(attn\.to_[qkv]|proj_mlp)\.(weight|bias)$")
_OURS_FUSED = re.compile(r"^single_blocks\.(\d+)\.attention_mlp\.linear_fc1\.(weight|bias)$")


def hunyuan_from_diffusers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers HunyuanVideo state dict under pose_mcore's names, single-stream q/k/v/MLP fused."""
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        m = _DIFFUSERS_FUSED.match(key)
        if m:
            fused.setdefault(f"single_blocks.{m[1]}.attention_mlp.linear_fc1.{m[3]}", {})[m[2]] = value
        else:
            out[DIFFUSERS.forward(key)] = value
    for key, parts in fused.items():
        missing = [p for p in _FUSED_PARTS if p not in parts]
        if missing:
            raise KeyError(f"{key}: the diffusers state dict lacks {missing} of the single-stream block")
        out[key] = torch.cat([parts[p] for p in _FUSED_PARTS])
    return out


def hunyuan_to_diffusers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A pose_mcore HunyuanVideo state dict under diffusers' names, ``linear_fc1`` split again."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _OURS_FUSED.match(key)
        if m:
            hidden = state[f"single_blocks.{m[1]}.attention_mlp.linear_fc2.weight"].shape[0]
            pieces = value.split([hidden, hidden, hidden, value.shape[0] - 3 * hidden])
            out.update({f"single_transformer_blocks.{m[1]}.{part}.{m[2]}": piece
                        for part, piece in zip(_FUSED_PARTS, pieces, strict=True)})
        else:
            out[DIFFUSERS.inverse(key)] = value
    return out
