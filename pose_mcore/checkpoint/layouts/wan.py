"""Wan parameter names: diffusers' ``WanTransformer3DModel`` layout <-> pose_mcore's own names.

pose_mcore's names are TP-independent (whole tensors); only this module knows diffusers' names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

# (diffusers, pose_mcore) name fragments, applied in order to each key.
_DIFFUSERS_RENAMES: tuple[tuple[str, str], ...] = (
    ("condition_embedder.time_embedder.", "time_embedder."),
    ("condition_embedder.time_proj.", "time_proj."),
    ("condition_embedder.text_embedder.", "text_embedder."),
    ("condition_embedder.image_embedder.", "image_embedder."),
    ("image_embedder.ff.net.0.proj.", "image_embedder.ff.linear_1."),
    ("image_embedder.ff.net.2.", "image_embedder.ff.linear_2."),
    (".attn1.", ".self_attention."),
    (".attn2.", ".cross_attention."),
    ("_attention.to_q.", "_attention.linear_q."),
    ("_attention.to_k.", "_attention.linear_k."),
    ("_attention.to_v.", "_attention.linear_v."),
    ("_attention.to_out.0.", "_attention.linear_proj."),
    ("_attention.norm_q.", "_attention.q_norm."),
    ("_attention.norm_k.", "_attention.k_norm."),
    ("_attention.add_k_proj.", "_attention.linear_k_img."),
    ("_attention.add_v_proj.", "_attention.linear_v_img."),
    ("_attention.norm_added_k.", "_attention.k_img_norm."),
    (".ffn.net.0.proj.", ".mlp.linear_fc1."),
    (".ffn.net.2.", ".mlp.linear_fc2."),
)


def _rename(key: str, pairs: tuple[tuple[str, str], ...]) -> str:
    for old, new in pairs:
        key = key.replace(old, new)
    return key


def wan_key_from_diffusers(key: str) -> str:
    return _rename(key, _DIFFUSERS_RENAMES)


def wan_key_to_diffusers(key: str) -> str:
    return _rename(key, tuple((new, old) for old, new in reversed(_DIFFUSERS_RENAMES)))


def wan_from_diffusers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers Wan state dict under pose_mcore's names (tensors are shared, not copied)."""
    return {wan_key_from_diffusers(k): v for k, v in state.items() if not re.search(r"norm_added_q", k)}


def wan_to_diffusers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A pose_mcore Wan state dict under diffusers' names."""
    return {wan_key_to_diffusers(k): v for k, v in state.items()}
