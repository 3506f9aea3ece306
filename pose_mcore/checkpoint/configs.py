"""Model configurations read from, and written to, the config files of other layouts (diffusers'
config.json, the official Wan config.json), or inferred from tensor shapes where a layout has none."""

from __future__ import annotations

import math
import re
from typing import Any

from pose_mcore.checkpoint.io import CheckpointError, TensorSource
from pose_mcore.config.base import ConfigError, VideoDiTConfig
from pose_mcore.models.registry import FAMILIES

DIFFUSERS_VERSION = "0.42.1"


def make_config(family: str, arch: dict[str, Any], **runtime: Any) -> VideoDiTConfig:
    """A family's config from architecture fields (and runtime fields such as the TP size)."""
    cls = FAMILIES[family].config_class
    unknown = sorted(set(arch) - set(cls.ARCH_FIELDS))
    if unknown:
        raise CheckpointError(f"unknown {cls.__name__} architecture field(s) {unknown}")
    try:
        return cls(**arch, **runtime)
    except ConfigError as e:
        raise CheckpointError(str(e)) from e


def matching_preset(cfg: VideoDiTConfig) -> str | None:
    """The name of the preset with exactly this architecture, if any."""
    family = next(f for f in FAMILIES.values() if isinstance(cfg, f.config_class))
    arch = cfg.architecture()
    for name, fields in family.presets.items():
        if make_config(family.name, fields).architecture() == arch:
            return name
    return None


# --- diffusers config.json -------------------------------------------------------------------------

def from_diffusers_config(family: str, j: dict[str, Any]) -> VideoDiTConfig:
    heads, head_dim = j["num_attention_heads"], j["attention_head_dim"]
    if family == "wan":
        if j.get("pos_embed_seq_len") or j.get("qk_norm", "rms_norm_across_heads") != "rms_norm_across_heads":
            raise CheckpointError("unsupported Wan variant: pos_embed_seq_len / qk_norm other than "
                                  "rms_norm_across_heads (FLF2V and older variants are not implemented)")
        arch = dict(num_layers=j["num_layers"], hidden_size=heads * head_dim, num_attention_heads=heads,
                    ffn_hidden_size=j["ffn_dim"], layernorm_epsilon=j.get("eps", 1e-6),
                    patch_size=tuple(j["patch_size"]), in_channels=j["in_channels"],
                    out_channels=j.get("out_channels") or j["in_channels"], text_dim=j["text_dim"],
                    freq_dim=j["freq_dim"], image_dim=j.get("image_dim"),
                    cross_attn_norm=j.get("cross_attn_norm", True))
    elif family == "hunyuan15":
        p = j["patch_size"]
        arch = dict(num_layers=j["num_layers"], num_refiner_layers=j["num_refiner_layers"],
                    hidden_size=heads * head_dim, num_attention_heads=heads,
                    ffn_hidden_size=int(heads * head_dim * j["mlp_ratio"]), patch_size=(j["patch_size_t"], p, p),
                    in_channels=j["in_channels"], out_channels=j.get("out_channels") or j["in_channels"],
                    text_dim=j["text_embed_dim"], glyph_dim=j["text_embed_2_dim"], image_dim=j["image_embed_dim"],
                    rope_theta=j["rope_theta"], rope_axes_dim=tuple(j["rope_axes_dim"]),
                    use_meanflow=j.get("use_meanflow", False), task_type=j["task_type"], target_size=j["target_size"])
    else:
        p = j["patch_size"]
        arch = dict(num_layers=j["num_layers"], num_single_layers=j["num_single_layers"],
                    num_refiner_layers=j["num_refiner_layers"], hidden_size=heads * head_dim,
                    num_attention_heads=heads, ffn_hidden_size=int(heads * head_dim * j["mlp_ratio"]),
                    patch_size=(j["patch_size_t"], p, p), in_channels=j["in_channels"],
                    out_channels=j.get("out_channels") or j["in_channels"], text_dim=j["text_embed_dim"],
                    pooled_dim=j["pooled_projection_dim"], guidance_embeds=j["guidance_embeds"],
                    rope_theta=j["rope_theta"], rope_axes_dim=tuple(j["rope_axes_dim"]),
                    image_condition_type=j.get("image_condition_type"))
    return make_config(family, arch)


def to_diffusers_config(cfg: VideoDiTConfig) -> dict[str, Any]:
    heads, head_dim = cfg.num_attention_heads, cfg.head_dim
    if type(cfg).__name__ == "WanConfig":
        return {"_class_name": "WanTransformer3DModel", "_diffusers_version": DIFFUSERS_VERSION,
                "patch_size": list(cfg.patch_size), "num_attention_heads": heads, "attention_head_dim": head_dim,
                "in_channels": cfg.in_channels, "out_channels": cfg.out_channels, "text_dim": cfg.text_dim,
                "freq_dim": cfg.freq_dim, "ffn_dim": cfg.ffn_hidden_size, "num_layers": cfg.num_layers,
                "cross_attn_norm": cfg.cross_attn_norm, "qk_norm": "rms_norm_across_heads",
                "eps": cfg.layernorm_epsilon, "image_dim": cfg.image_dim,
                "added_kv_proj_dim": cfg.hidden_size if cfg.image_dim is not None else None,
                "rope_max_seq_len": 1024, "pos_embed_seq_len": None}
    if cfg.patch_size[1] != cfg.patch_size[2]:
        raise CheckpointError(f"diffusers' HunyuanVideo needs a square spatial patch; patch_size={cfg.patch_size}")
    if type(cfg).__name__ == "HunyuanVideo15Config":
        if cfg.glyph_hidden_dim != 2048:
            raise CheckpointError(f"diffusers' HunyuanVideo-1.5 has a 2048-wide glyph projection; glyph_hidden_dim="
                                  f"{cfg.glyph_hidden_dim}")
        return {"_class_name": "HunyuanVideo15Transformer3DModel", "_diffusers_version": DIFFUSERS_VERSION,
                "in_channels": cfg.in_channels, "out_channels": cfg.out_channels, "num_attention_heads": heads,
                "attention_head_dim": head_dim, "num_layers": cfg.num_layers,
                "num_refiner_layers": cfg.num_refiner_layers, "mlp_ratio": cfg.ffn_hidden_size / cfg.hidden_size,
                "patch_size": cfg.patch_size[1], "patch_size_t": cfg.patch_size[0], "qk_norm": "rms_norm",
                "text_embed_dim": cfg.text_dim, "text_embed_2_dim": cfg.glyph_dim, "image_embed_dim": cfg.image_dim,
                "rope_theta": cfg.rope_theta, "rope_axes_dim": list(cfg.rope_axes_dim),
                "target_size": cfg.target_size, "task_type": cfg.task_type, "use_meanflow": cfg.use_meanflow}
    return {"_class_name": "HunyuanVideoTransformer3DModel", "_diffusers_version": DIFFUSERS_VERSION,
            "in_channels": cfg.in_channels, "out_channels": cfg.out_channels, "num_attention_heads": heads,
            "attention_head_dim": head_dim, "num_layers": cfg.num_layers, "num_single_layers": cfg.num_single_layers,
            "num_refiner_layers": cfg.num_refiner_layers, "mlp_ratio": cfg.ffn_hidden_size / cfg.hidden_size,
            "patch_size": cfg.patch_size[1], "patch_size_t": cfg.patch_size[0], "qk_norm": "rms_norm",
            "guidance_embeds": cfg.guidance_embeds, "text_embed_dim": cfg.text_dim,
            "pooled_projection_dim": cfg.pooled_dim, "rope_theta": cfg.rope_theta,
            "rope_axes_dim": list(cfg.rope_axes_dim), "image_condition_type": cfg.image_condition_type}


# --- the official Wan config.json ------------------------------------------------------------------

def from_official_wan_config(j: dict[str, Any]) -> dict[str, Any]:
    """Architecture fields an official Wan config.json states (the rest come from tensor shapes)."""
    return {"num_attention_heads": j["num_heads"], "layernorm_epsilon": j.get("eps", 1e-6)}


def to_official_wan_config(cfg: VideoDiTConfig) -> dict[str, Any]:
    return {"_class_name": "WanModel", "model_type": "i2v" if cfg.image_dim is not None else "t2v",
            "patch_size": list(cfg.patch_size), "text_len": 512, "in_dim": cfg.in_channels, "dim": cfg.hidden_size,
            "ffn_dim": cfg.ffn_hidden_size, "freq_dim": cfg.freq_dim, "text_dim": cfg.text_dim,
            "out_dim": cfg.out_channels, "num_heads": cfg.num_attention_heads, "num_layers": cfg.num_layers,
            "window_size": [-1, -1], "qk_norm": True, "cross_attn_norm": cfg.cross_attn_norm,
            "eps": cfg.layernorm_epsilon}


# --- the official HunyuanVideo-1.5 config.json ---------------------------------------------------------

OFFICIAL_HUNYUAN15_CLASS = "HunyuanVideo_1_5_DiffusionTransformer"
_RESOLUTIONS = {"480p": 640, "720p": 960}
"""The official ``ideal_resolution`` and the diffusers ``target_size`` it stands for."""


def from_official_hunyuan15_config(j: dict[str, Any]) -> dict[str, Any]:
    """Architecture fields an official HunyuanVideo-1.5 config.json states (the rest come from tensor shapes)."""
    out: dict[str, Any] = {"num_attention_heads": j["heads_num"], "rope_axes_dim": tuple(j["rope_dim_list"]),
                           "rope_theta": float(j.get("rope_theta", 256))}
    if j.get("ideal_task") in ("t2v", "i2v"):
        out["task_type"] = j["ideal_task"]
    if j.get("ideal_resolution") in _RESOLUTIONS:
        out["target_size"] = _RESOLUTIONS[j["ideal_resolution"]]
    return out


def to_official_hunyuan15_config(cfg: VideoDiTConfig) -> dict[str, Any]:
    resolution = {v: k for k, v in _RESOLUTIONS.items()}.get(cfg.target_size)
    return {"_class_name": OFFICIAL_HUNYUAN15_CLASS, "patch_size": list(cfg.patch_size),
            "in_channels": cfg.out_channels, "concat_condition": True, "out_channels": cfg.out_channels,
            "hidden_size": cfg.hidden_size, "heads_num": cfg.num_attention_heads,
            "mlp_width_ratio": cfg.ffn_hidden_size / cfg.hidden_size, "mlp_act_type": "gelu_tanh",
            "mm_double_blocks_depth": cfg.num_layers, "mm_single_blocks_depth": 0,
            "rope_dim_list": list(cfg.rope_axes_dim), "qkv_bias": True, "qk_norm": True, "qk_norm_type": "rms",
            "guidance_embed": False, "use_meanflow": cfg.use_meanflow, "text_projection": "single_refiner",
            "use_attention_mask": True, "text_states_dim": cfg.text_dim, "rope_theta": cfg.rope_theta,
            "glyph_byT5_v2": True, "vision_projection": "linear", "vision_states_dim": cfg.image_dim,
            "use_cond_type_embedding": True, "ideal_resolution": resolution, "ideal_task": cfg.task_type}


# --- shapes of the official layouts -----------------------------------------------------------------

def _count(keys: list[str], prefix: str) -> int:
    found = {int(m[1]) for k in keys if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return max(found) + 1 if found else 0


def _shape(source: TensorSource, key: str) -> tuple[int, ...]:
    if key not in source.keys():
        raise CheckpointError(f"{source.path}: missing tensor {key!r}, needed to infer the model's shape")
    return source.shape(key)


def official_arch_from_shapes(family: str, source: TensorSource) -> tuple[dict[str, Any], list[str]]:
    """Architecture fields readable from an official checkpoint's tensor shapes, and notes on what
    had to be assumed."""
    keys = source.keys()
    notes: list[str] = []
    if family == "wan":
        pe = _shape(source, "patch_embedding.weight")
        patch = tuple(pe[2:])
        arch = dict(hidden_size=pe[0], in_channels=pe[1], patch_size=patch, num_layers=_count(keys, "blocks."),
                    ffn_hidden_size=_shape(source, "blocks.0.ffn.0.weight")[0],
                    text_dim=_shape(source, "text_embedding.0.weight")[1],
                    freq_dim=_shape(source, "time_embedding.0.weight")[1],
                    out_channels=_shape(source, "head.head.weight")[0] // math.prod(patch),
                    image_dim=source.shape("img_emb.proj.0.weight")[0] if "img_emb.proj.0.weight" in keys else None,
                    cross_attn_norm="blocks.0.norm3.weight" in keys)
        return arch, notes
    if family == "hunyuan15":
        return _official_hunyuan15_arch(source)
    pe = _shape(source, "img_in.proj.weight")
    patch = tuple(pe[2:])
    head_dim = _shape(source, "double_blocks.0.img_attn_q_norm.weight")[0]
    out = _shape(source, "final_layer.linear.weight")[0] // math.prod(patch)
    arch = dict(hidden_size=pe[0], in_channels=pe[1], patch_size=patch, num_attention_heads=pe[0] // head_dim,
                num_layers=_count(keys, "double_blocks."), num_single_layers=_count(keys, "single_blocks."),
                num_refiner_layers=_count(keys, "txt_in.individual_token_refiner.blocks."),
                ffn_hidden_size=_shape(source, "double_blocks.0.img_mlp.fc1.weight")[0],
                text_dim=_shape(source, "txt_in.input_embedder.weight")[1],
                pooled_dim=_shape(source, "vector_in.in_layer.weight")[1],
                guidance_embeds="guidance_in.mlp.0.weight" in keys, out_channels=out,
                image_condition_type="latent_concat" if pe[1] == 2 * out + 1 else None)
    if head_dim == 128:
        arch["rope_axes_dim"] = (16, 56, 56)
    else:
        notes.append(f"head dim {head_dim} is not the official 128: the rotary axes must be given "
                     "(--set rope_axes_dim=T,H,W)")
    if arch["image_condition_type"] is None:
        notes.append("T2V and token-replace I2V checkpoints have the same tensors; assuming T2V "
                      "(--set image_condition_type=token_replace for the I2V model)")
    return arch, notes


def _official_hunyuan15_arch(source: TensorSource) -> tuple[dict[str, Any], list[str]]:
    keys = source.keys()
    pe = _shape(source, "img_in.proj.weight")
    patch = tuple(pe[2:])
    head_dim = _shape(source, "double_blocks.0.img_attn_q_norm.weight")[0]
    glyph = _shape(source, "byt5_in.fc1.weight")
    arch = dict(hidden_size=pe[0], in_channels=pe[1], patch_size=patch, num_attention_heads=pe[0] // head_dim,
                num_layers=_count(keys, "double_blocks."),
                num_refiner_layers=_count(keys, "txt_in.individual_token_refiner.blocks."),
                ffn_hidden_size=_shape(source, "double_blocks.0.img_mlp.fc1.weight")[0],
                text_dim=_shape(source, "txt_in.input_embedder.weight")[1], glyph_dim=glyph[1],
                glyph_hidden_dim=glyph[0], image_dim=_shape(source, "vision_in.proj.1.weight")[1],
                use_meanflow="time_r_in.mlp.0.weight" in keys,
                out_channels=_shape(source, "final_layer.linear.weight")[0] // math.prod(patch))
    notes = []
    if head_dim == 128:
        arch["rope_axes_dim"] = (16, 56, 56)
    else:
        notes.append(f"head dim {head_dim} is not the official 128: the rotary axes must be given "
                     "(--set rope_axes_dim=T,H,W)")
    return arch, notes


def hunyuan15_task_from_folder(name: str) -> dict[str, Any]:
    """Task and resolution from an official variant folder's name (``transformer/480p_t2v``, ``720p_i2v_distilled``)."""
    m = re.match(r"(480p|720p)_(t2v|i2v)(_|$)", name)
    return {"target_size": _RESOLUTIONS[m[1]], "task_type": m[2]} if m else {}


def infer_wan_heads(arch: dict[str, Any]) -> tuple[int, str]:
    """Wan's tensors do not show the head count: take it from a preset of the same shape, else 128-wide heads."""
    for name, fields in FAMILIES["wan"].presets.items():
        if all(fields.get(k) == arch.get(k) for k in ("hidden_size", "num_layers", "ffn_hidden_size", "in_channels",
                                                      "out_channels")):
            return fields["num_attention_heads"], f"head count {fields['num_attention_heads']} from preset {name}"
    if arch["hidden_size"] % 128 == 0:
        return arch["hidden_size"] // 128, (f"head count {arch['hidden_size'] // 128} assumed from 128-wide heads "
                                            "(--set num_attention_heads=N to override)")
    raise CheckpointError(f"cannot infer the head count of a Wan model with hidden size {arch['hidden_size']}: "
                          "pass --set num_attention_heads=N")
