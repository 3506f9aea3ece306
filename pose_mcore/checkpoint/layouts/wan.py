"""Wan parameter layouts as conversion rules into pose_mcore's own names.

``DIFFUSERS``: diffusers' ``WanTransformer3DModel``. ``ORIGINAL``: the official Wan2.1 / Wan2.2
checkpoints (``self_attn.q``, ``ffn.0``, ``head.head``, ...; their cross-attention LayerNorm is
``norm3``). pose_mcore's names are TP-independent; only this module knows the others.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from pose_mcore.checkpoint.layouts.rules import Rule, apply_rules, invert, rename

_B = "blocks.{i}."


def _attention(src: str, dst: str, names: dict[str, str]) -> list[Rule]:
    return [rename(f"{_B}{src}.{a}.{{p}}", f"{_B}{dst}.{b}.{{p}}") for a, b in names.items()]


_OURS_ATTN = {"q": "linear_q", "k": "linear_k", "v": "linear_v", "o": "linear_proj", "norm_q": "q_norm",
              "norm_k": "k_norm", "k_img": "linear_k_img", "v_img": "linear_v_img", "norm_k_img": "k_img_norm"}
_DIFFUSERS_ATTN = {"to_q": "linear_q", "to_k": "linear_k", "to_v": "linear_v", "to_out.0": "linear_proj",
                   "norm_q": "q_norm", "norm_k": "k_norm", "add_k_proj": "linear_k_img", "add_v_proj": "linear_v_img",
                   "norm_added_k": "k_img_norm"}

DIFFUSERS: list[Rule] = [
    rename("patch_embedding.{p}", "patch_embedding.{p}"),
    rename("condition_embedder.time_embedder.linear_{j}.{p}", "time_embedder.linear_{j}.{p}"),
    rename("condition_embedder.time_proj.{p}", "time_proj.{p}"),
    rename("condition_embedder.text_embedder.linear_{j}.{p}", "text_embedder.linear_{j}.{p}"),
    rename("condition_embedder.image_embedder.norm1.{p}", "image_embedder.norm1.{p}"),
    rename("condition_embedder.image_embedder.ff.net.0.proj.{p}", "image_embedder.ff.linear_1.{p}"),
    rename("condition_embedder.image_embedder.ff.net.2.{p}", "image_embedder.ff.linear_2.{p}"),
    rename("condition_embedder.image_embedder.norm2.{p}", "image_embedder.norm2.{p}"),
    *_attention("attn1", "self_attention", _DIFFUSERS_ATTN),
    *_attention("attn2", "cross_attention", _DIFFUSERS_ATTN),
    rename(_B + "norm2.{p}", _B + "norm2.{p}"),
    rename(_B + "ffn.net.0.proj.{p}", _B + "mlp.linear_fc1.{p}"),
    rename(_B + "ffn.net.2.{p}", _B + "mlp.linear_fc2.{p}"),
    rename(_B + "scale_shift_table", _B + "scale_shift_table"),
    rename("proj_out.{p}", "proj_out.{p}"),
    rename("scale_shift_table", "scale_shift_table"),
]
"""diffusers' ``WanTransformer3DModel`` -> pose_mcore."""

ORIGINAL: list[Rule] = [
    rename("patch_embedding.{p}", "patch_embedding.{p}"),
    rename("time_embedding.0.{p}", "time_embedder.linear_1.{p}"),
    rename("time_embedding.2.{p}", "time_embedder.linear_2.{p}"),
    rename("time_projection.1.{p}", "time_proj.{p}"),
    rename("text_embedding.0.{p}", "text_embedder.linear_1.{p}"),
    rename("text_embedding.2.{p}", "text_embedder.linear_2.{p}"),
    rename("img_emb.proj.0.{p}", "image_embedder.norm1.{p}"),
    rename("img_emb.proj.1.{p}", "image_embedder.ff.linear_1.{p}"),
    rename("img_emb.proj.3.{p}", "image_embedder.ff.linear_2.{p}"),
    rename("img_emb.proj.4.{p}", "image_embedder.norm2.{p}"),
    *_attention("self_attn", "self_attention", _OURS_ATTN),
    *_attention("cross_attn", "cross_attention", _OURS_ATTN),
    rename(_B + "norm3.{p}", _B + "norm2.{p}"),  # the official code's cross-attention norm is norm3
    rename(_B + "ffn.0.{p}", _B + "mlp.linear_fc1.{p}"),
    rename(_B + "ffn.2.{p}", _B + "mlp.linear_fc2.{p}"),
    rename(_B + "modulation", _B + "scale_shift_table"),
    rename("head.head.{p}", "proj_out.{p}"),
    rename("head.modulation", "scale_shift_table"),
]
"""The official Wan checkpoints -> pose_mcore."""


def wan_from_diffusers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers Wan state dict under pose_mcore's names (tensors are shared, not copied)."""
    return apply_rules(DIFFUSERS, state)


def wan_to_diffusers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A pose_mcore Wan state dict under diffusers' names."""
    return apply_rules(invert(DIFFUSERS), state)
