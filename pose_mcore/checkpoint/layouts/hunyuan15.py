"""HunyuanVideo-1.5 parameter layouts as conversion rules into pose_mcore's own names.

``DIFFUSERS``: diffusers' ``HunyuanVideo15Transformer3DModel``. ``ORIGINAL``: Tencent's checkpoints
(``transformer/<variant>/diffusion_pytorch_model*.safetensors``), whose dual-stream q, k, v are apart
(unlike HunyuanVideo's fused ``img_attn_qkv``), whose refiner's are fused (``self_attn_qkv``), and whose
final AdaLN holds (shift, scale). The token refiner and the dual-stream blocks share HunyuanVideo's rules.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from pose_mcore.checkpoint.layouts.hunyuan import (
    DUAL_DIFFUSERS,
    DUAL_ORIGINAL_SHARED,
    FINAL_ORIGINAL,
    REFINER_DIFFUSERS,
    REFINER_ORIGINAL,
)
from pose_mcore.checkpoint.layouts.rules import Rule, apply_rules, invert, rename

_OD = "double_blocks.{i}."

DIFFUSERS: list[Rule] = [
    rename("x_embedder.proj.{p}", "x_embedder.{p}"),
    rename("time_embed.timestep_embedder.linear_{j}.{p}", "time_embedder.linear_{j}.{p}"),
    rename("time_embed.timestep_embedder_r.linear_{j}.{p}", "time_r_embedder.linear_{j}.{p}"),
    *REFINER_DIFFUSERS,
    rename("context_embedder_2.norm.{p}", "glyph_embedder.norm.{p}"),
    rename("context_embedder_2.linear_1.{p}", "glyph_embedder.ff.linear_1.{p}"),
    rename("context_embedder_2.linear_2.{p}", "glyph_embedder.ff.linear_2.{p}"),
    rename("context_embedder_2.linear_3.{p}", "glyph_embedder.linear_3.{p}"),
    rename("image_embedder.norm_in.{p}", "image_embedder.norm1.{p}"),
    rename("image_embedder.linear_{j}.{p}", "image_embedder.ff.linear_{j}.{p}"),
    rename("image_embedder.norm_out.{p}", "image_embedder.norm2.{p}"),
    rename("cond_type_embed.{p}", "context_sources.source_embedding.{p}"),
    *DUAL_DIFFUSERS,
    rename("norm_out.linear.{p}", "out_modulation.linear.{p}"),
    rename("proj_out.{p}", "proj_out.{p}"),
]
"""diffusers' ``HunyuanVideo15Transformer3DModel`` -> pose_mcore."""

ORIGINAL: list[Rule] = [
    rename("img_in.proj.{p}", "x_embedder.{p}"),
    rename("time_in.mlp.0.{p}", "time_embedder.linear_1.{p}"),
    rename("time_in.mlp.2.{p}", "time_embedder.linear_2.{p}"),
    rename("time_r_in.mlp.0.{p}", "time_r_embedder.linear_1.{p}"),
    rename("time_r_in.mlp.2.{p}", "time_r_embedder.linear_2.{p}"),
    *REFINER_ORIGINAL,
    rename("byt5_in.layernorm.{p}", "glyph_embedder.norm.{p}"),
    rename("byt5_in.fc1.{p}", "glyph_embedder.ff.linear_1.{p}"),
    rename("byt5_in.fc2.{p}", "glyph_embedder.ff.linear_2.{p}"),
    rename("byt5_in.fc3.{p}", "glyph_embedder.linear_3.{p}"),
    rename("vision_in.proj.0.{p}", "image_embedder.norm1.{p}"),
    rename("vision_in.proj.1.{p}", "image_embedder.ff.linear_1.{p}"),
    rename("vision_in.proj.3.{p}", "image_embedder.ff.linear_2.{p}"),
    rename("vision_in.proj.4.{p}", "image_embedder.norm2.{p}"),
    rename("cond_type_embedding.{p}", "context_sources.source_embedding.{p}"),
    *DUAL_ORIGINAL_SHARED,
    *(rename(_OD + f"{stream}_attn_{x}.{{p}}", _OD + f"attention.linear_{x}{suffix}.{{p}}")
      for stream, suffix in (("img", ""), ("txt", "_ctx")) for x in "qkv"),
    *FINAL_ORIGINAL,
]
"""Tencent's HunyuanVideo-1.5 checkpoints -> pose_mcore."""


def hunyuan15_from_diffusers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers HunyuanVideo-1.5 state dict under pose_mcore's names."""
    return apply_rules(DIFFUSERS, state)


def hunyuan15_to_diffusers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A pose_mcore HunyuanVideo-1.5 state dict under diffusers' names."""
    return apply_rules(invert(DIFFUSERS), state)
