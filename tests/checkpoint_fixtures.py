"""Tiny checkpoints in every layout, built from tiny diffusers models.

The official layouts are derived from diffusers' state dicts with the inverse of the key maps that
diffusers publishes (``loaders/single_file_utils.py``), written out here independently of
pose_mcore's own rules, and checked against diffusers' converters where those work at tiny sizes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from hunyuan15_reference import diffusers_hunyuan15
from hunyuan_reference import diffusers_hunyuan
from safetensors.torch import save_file
from wan_reference import diffusers_wan

_WAN_TO_ORIGINAL = [  # diffusers -> official, applied in order (inverse of diffusers' rename table)
    ("condition_embedder.time_embedder.linear_1", "time_embedding.0"),
    ("condition_embedder.time_embedder.linear_2", "time_embedding.2"),
    ("condition_embedder.text_embedder.linear_1", "text_embedding.0"),
    ("condition_embedder.text_embedder.linear_2", "text_embedding.2"),
    ("condition_embedder.time_proj", "time_projection.1"),
    ("condition_embedder.image_embedder.norm1", "img_emb.proj.0"),
    ("condition_embedder.image_embedder.ff.net.0.proj", "img_emb.proj.1"),
    ("condition_embedder.image_embedder.ff.net.2", "img_emb.proj.3"),
    ("condition_embedder.image_embedder.norm2", "img_emb.proj.4"),
    ("attn1", "self_attn"), ("attn2", "cross_attn"),
    (".to_out.0.", ".o."), (".to_q.", ".q."), (".to_k.", ".k."), (".to_v.", ".v."),
    (".add_k_proj.", ".k_img."), (".add_v_proj.", ".v_img."), (".norm_added_k.", ".norm_k_img."),
    ("ffn.net.0.proj", "ffn.0"), ("ffn.net.2", "ffn.2"), (".norm2.", ".norm3."),
]


def wan_original_state(diffusers_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in diffusers_state.items():
        new = key
        for a, b in _WAN_TO_ORIGINAL:
            new = new.replace(a, b)
        new = re.sub(r"^blocks\.(\d+)\.scale_shift_table$", r"blocks.\1.modulation", new)
        new = {"scale_shift_table": "head.modulation", "proj_out.weight": "head.head.weight",
               "proj_out.bias": "head.head.bias"}.get(new, new)
        out[new] = value.clone()
    return out


def hunyuan_original_state(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    renames = [
        (r"^x_embedder\.proj\.", "img_in.proj."),
        (r"^time_text_embed\.timestep_embedder\.linear_1\.", "time_in.mlp.0."),
        (r"^time_text_embed\.timestep_embedder\.linear_2\.", "time_in.mlp.2."),
        (r"^time_text_embed\.guidance_embedder\.linear_1\.", "guidance_in.mlp.0."),
        (r"^time_text_embed\.guidance_embedder\.linear_2\.", "guidance_in.mlp.2."),
        (r"^time_text_embed\.text_embedder\.linear_1\.", "vector_in.in_layer."),
        (r"^time_text_embed\.text_embedder\.linear_2\.", "vector_in.out_layer."),
        (r"^context_embedder\.proj_in\.", "txt_in.input_embedder."),
        (r"^context_embedder\.time_text_embed\.timestep_embedder\.linear_1\.", "txt_in.t_embedder.mlp.0."),
        (r"^context_embedder\.time_text_embed\.timestep_embedder\.linear_2\.", "txt_in.t_embedder.mlp.2."),
        (r"^context_embedder\.time_text_embed\.text_embedder\.", "txt_in.c_embedder."),
        (r"^context_embedder\.token_refiner\.refiner_blocks\.(\d+)\.attn\.to_out\.0\.",
         r"txt_in.individual_token_refiner.blocks.\1.self_attn_proj."),
        (r"^context_embedder\.token_refiner\.refiner_blocks\.(\d+)\.ff\.net\.0\.proj\.",
         r"txt_in.individual_token_refiner.blocks.\1.mlp.fc1."),
        (r"^context_embedder\.token_refiner\.refiner_blocks\.(\d+)\.ff\.net\.2\.",
         r"txt_in.individual_token_refiner.blocks.\1.mlp.fc2."),
        (r"^context_embedder\.token_refiner\.refiner_blocks\.(\d+)\.norm_out\.linear\.",
         r"txt_in.individual_token_refiner.blocks.\1.adaLN_modulation.1."),
        (r"^context_embedder\.token_refiner\.refiner_blocks\.(\d+)\.norm(\d)\.",
         r"txt_in.individual_token_refiner.blocks.\1.norm\2."),
        (r"^transformer_blocks\.(\d+)\.norm1\.linear\.", r"double_blocks.\1.img_mod.linear."),
        (r"^transformer_blocks\.(\d+)\.norm1_context\.linear\.", r"double_blocks.\1.txt_mod.linear."),
        (r"^transformer_blocks\.(\d+)\.attn\.norm_q\.", r"double_blocks.\1.img_attn_q_norm."),
        (r"^transformer_blocks\.(\d+)\.attn\.norm_k\.", r"double_blocks.\1.img_attn_k_norm."),
        (r"^transformer_blocks\.(\d+)\.attn\.norm_added_q\.", r"double_blocks.\1.txt_attn_q_norm."),
        (r"^transformer_blocks\.(\d+)\.attn\.norm_added_k\.", r"double_blocks.\1.txt_attn_k_norm."),
        (r"^transformer_blocks\.(\d+)\.attn\.to_out\.0\.", r"double_blocks.\1.img_attn_proj."),
        (r"^transformer_blocks\.(\d+)\.attn\.to_add_out\.", r"double_blocks.\1.txt_attn_proj."),
        (r"^transformer_blocks\.(\d+)\.ff\.net\.0\.proj\.", r"double_blocks.\1.img_mlp.fc1."),
        (r"^transformer_blocks\.(\d+)\.ff\.net\.2\.", r"double_blocks.\1.img_mlp.fc2."),
        (r"^transformer_blocks\.(\d+)\.ff_context\.net\.0\.proj\.", r"double_blocks.\1.txt_mlp.fc1."),
        (r"^transformer_blocks\.(\d+)\.ff_context\.net\.2\.", r"double_blocks.\1.txt_mlp.fc2."),
        (r"^single_transformer_blocks\.(\d+)\.norm\.linear\.", r"single_blocks.\1.modulation.linear."),
        (r"^single_transformer_blocks\.(\d+)\.attn\.norm_q\.", r"single_blocks.\1.q_norm."),
        (r"^single_transformer_blocks\.(\d+)\.attn\.norm_k\.", r"single_blocks.\1.k_norm."),
        (r"^single_transformer_blocks\.(\d+)\.proj_out\.", r"single_blocks.\1.linear2."),
        (r"^proj_out\.", "final_layer.linear."),
    ]
    fused = {  # (diffusers parts) -> official fused tensor
        r"^context_embedder\.token_refiner\.refiner_blocks\.(\d+)\.attn\.to_([qkv])\.(\w+)$":
            (r"txt_in.individual_token_refiner.blocks.{0}.self_attn_qkv.{2}", "qkv"),
        r"^transformer_blocks\.(\d+)\.attn\.to_([qkv])\.(\w+)$": (r"double_blocks.{0}.img_attn_qkv.{2}", "qkv"),
        r"^transformer_blocks\.(\d+)\.attn\.add_([qkv])_proj\.(\w+)$": (r"double_blocks.{0}.txt_attn_qkv.{2}", "qkv"),
        r"^single_transformer_blocks\.(\d+)\.(?:attn\.to_)?([qkv]|proj_mlp)\.(\w+)$":
            (r"single_blocks.{0}.linear1.{2}", ("q", "k", "v", "proj_mlp")),
    }
    parts: dict[str, dict[str, torch.Tensor]] = {}
    orders: dict[str, tuple[str, ...]] = {}
    for key, value in d.items():
        for pattern, (target, order) in fused.items():
            m = re.match(pattern, key)
            if m:
                name = target.format(*m.groups())
                parts.setdefault(name, {})[m[2]] = value
                orders[name] = tuple(order)
                break
        else:
            if key.startswith("norm_out.linear."):
                scale, shift = value.chunk(2)
                out[key.replace("norm_out.linear.", "final_layer.adaLN_modulation.1.")] = torch.cat([shift, scale])
                continue
            new = key
            for pattern, repl in renames:
                new = re.sub(pattern, repl, new)
            out[new] = value.clone()
    for name, got in parts.items():
        out[name] = torch.cat([got[p] for p in orders[name]])
    return out


_HUNYUAN15_TO_ORIGINAL = [  # diffusers -> official for what HunyuanVideo-1.5 adds (diffusers' conversion script)
    (r"^time_embed\.timestep_embedder\.linear_1\.", "time_in.mlp.0."),
    (r"^time_embed\.timestep_embedder\.linear_2\.", "time_in.mlp.2."),
    (r"^time_embed\.timestep_embedder_r\.linear_1\.", "time_r_in.mlp.0."),
    (r"^time_embed\.timestep_embedder_r\.linear_2\.", "time_r_in.mlp.2."),
    (r"^context_embedder_2\.norm\.", "byt5_in.layernorm."),
    (r"^context_embedder_2\.linear_(\d)\.", r"byt5_in.fc\1."),
    (r"^image_embedder\.norm_in\.", "vision_in.proj.0."),
    (r"^image_embedder\.linear_1\.", "vision_in.proj.1."),
    (r"^image_embedder\.linear_2\.", "vision_in.proj.3."),
    (r"^image_embedder\.norm_out\.", "vision_in.proj.4."),
    (r"^cond_type_embed\.", "cond_type_embedding."),
    (r"^transformer_blocks\.(\d+)\.attn\.to_([qkv])\.", r"double_blocks.\1.img_attn_\2."),
    (r"^transformer_blocks\.(\d+)\.attn\.add_([qkv])_proj\.", r"double_blocks.\1.txt_attn_\2."),
]


def hunyuan15_original_state(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tencent's names for a diffusers HunyuanVideo-1.5 state dict: its own keys by the table above (q, k, v of the
    dual-stream blocks apart), the rest (refiner, block norms and MLPs, head) as HunyuanVideo's."""
    out, rest = {}, {}
    for key, value in d.items():
        for pattern, repl in _HUNYUAN15_TO_ORIGINAL:
            if re.match(pattern, key):
                out[re.sub(pattern, repl, key)] = value.clone()
                break
        else:
            rest[key] = value
    return {**out, **hunyuan_original_state(rest)}


HUNYUAN15_OFFICIAL_CONFIG = {"_class_name": "HunyuanVideo_1_5_DiffusionTransformer", "heads_num": 4,
                             "rope_dim_list": [2, 2, 4], "rope_theta": 256, "ideal_task": "i2v",
                             "ideal_resolution": "720p", "use_meanflow": True}
"""The fields pose-convert reads from an official config.json (the tiny mean-flow model's)."""


def write_all_layouts(root: Path) -> dict[str, tuple[Path, object]]:
    """{case: (path, diffusers reference model)} for every source layout the converter reads."""
    cases = {}
    for variant, i2v in (("t2v", False), ("i2v", True)):
        model = diffusers_wan(i2v, seed=1)
        model.save_pretrained(root / f"wan_{variant}_diffusers")
        original = wan_original_state(model.state_dict())
        save_file(original, root / f"wan_{variant}.safetensors")
        cases[f"wan_{variant}_diffusers"] = (root / f"wan_{variant}_diffusers", model)
        cases[f"wan_{variant}_original"] = (root / f"wan_{variant}.safetensors", model)
    for variant in ("t2v", "i2v_concat"):
        model = diffusers_hunyuan(variant, seed=1)
        model.save_pretrained(root / f"hunyuan_{variant}_diffusers")
        folder = root / f"hunyuan_{variant}_original"
        folder.mkdir()
        torch.save({"module": hunyuan_original_state(model.state_dict())}, folder / "mp_rank_00_model_states.pt")
        cases[f"hunyuan_{variant}_diffusers"] = (root / f"hunyuan_{variant}_diffusers", model)
        cases[f"hunyuan_{variant}_original"] = (folder, model)
    for variant in ("t2v", "i2v", "meanflow"):
        model = diffusers_hunyuan15(variant, seed=1)
        model.save_pretrained(root / f"hunyuan15_{variant}_diffusers")
        # the official variant folders: transformer/480p_t2v/, or one that says what it is in config.json
        folder = root / f"hunyuan15_{variant}_original" / ("custom" if variant == "meanflow" else f"480p_{variant}")
        folder.mkdir(parents=True)
        save_file(hunyuan15_original_state(model.state_dict()), folder / "diffusion_pytorch_model.safetensors")
        if variant == "meanflow":
            (folder / "config.json").write_text(json.dumps(HUNYUAN15_OFFICIAL_CONFIG))
        cases[f"hunyuan15_{variant}_diffusers"] = (root / f"hunyuan15_{variant}_diffusers", model)
        cases[f"hunyuan15_{variant}_original"] = (folder, model)
    return cases


def checkpoint_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a checkpoint file or folder, by name."""
    from pose_mcore.checkpoint.io import open_source

    source = open_source(path)
    return {k: source.get(k) for k in source.keys()}
