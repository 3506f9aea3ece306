"""The model families by name: their presets, config class and model class, and the conditioning
keyword arguments each ``forward`` takes beside ``hidden_states`` and ``timestep``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch._guards import detect_fake_mode

from pose_mcore.config.base import ConfigError, VideoDiTConfig
from pose_mcore.config.hunyuan import HUNYUAN_PRESETS, HunyuanConfig, hunyuan_config
from pose_mcore.config.hunyuan15 import HUNYUAN15_PRESETS, HunyuanVideo15Config, hunyuan15_config
from pose_mcore.config.wan import WAN_PRESETS, WanConfig, wan_config
from pose_mcore.models.experts import Experts
from pose_mcore.models.hunyuan import HunyuanModel
from pose_mcore.models.hunyuan15 import HunyuanVideo15Model
from pose_mcore.models.wan import WanModel


def _wan_conditions(cfg: WanConfig, batch: int, text_len: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    out = {"encoder_hidden_states": torch.randn(batch, text_len, cfg.text_dim, generator=gen)}
    if cfg.image_dim is not None:
        out["encoder_hidden_states_image"] = torch.randn(batch, 257, cfg.image_dim, generator=gen)
    return out


def _prefix_mask(batch: int, length: int, gen: torch.Generator, least: int = 1) -> torch.Tensor:
    lengths = torch.randint(least, length + 1, (batch,), generator=gen)
    return (torch.arange(length)[None, :] < lengths[:, None]).long()


def _hunyuan_conditions(cfg: HunyuanConfig, batch: int, text_len: int, gen: torch.Generator
                        ) -> dict[str, torch.Tensor]:
    out = {"encoder_hidden_states": torch.randn(batch, text_len, cfg.text_dim, generator=gen),
           "encoder_attention_mask": _prefix_mask(batch, text_len, gen),
           "pooled_projections": torch.randn(batch, cfg.pooled_dim, generator=gen)}
    if cfg.guidance_embeds:
        out["guidance"] = torch.full((batch,), 6000.0)
    return out


_GLYPH_TOKENS, _SIGLIP_TOKENS = 256, 729  # the pipelines' ByT5 length and SigLIP-384's 27 x 27 tokens


def _hunyuan15_conditions(cfg: HunyuanVideo15Config, batch: int, text_len: int, gen: torch.Generator
                          ) -> dict[str, torch.Tensor]:
    out = {"encoder_hidden_states": torch.randn(batch, text_len, cfg.text_dim, generator=gen),
           "encoder_attention_mask": _prefix_mask(batch, text_len, gen),
           "encoder_hidden_states_2": torch.randn(batch, _GLYPH_TOKENS, cfg.glyph_dim, generator=gen),
           "encoder_attention_mask_2": _prefix_mask(batch, _GLYPH_TOKENS, gen, least=0)}
    if cfg.task_type == "i2v":
        out["image_embeds"] = torch.randn(batch, _SIGLIP_TOKENS, cfg.image_dim, generator=gen)
    return out


@dataclass(frozen=True)
class ModelFamily:
    """One architecture family: how to configure, build and condition it."""

    name: str
    presets: dict[str, dict[str, Any]]
    config_class: type[VideoDiTConfig]
    make_config: Callable[..., VideoDiTConfig]
    model_class: type[torch.nn.Module]
    random_conditions: Callable[[Any, int, int, torch.Generator], dict[str, torch.Tensor]]
    """Random conditioning inputs of the right shapes (text tokens, masks, image tokens), for smoke runs."""

    def build(self, config: VideoDiTConfig) -> torch.nn.Module:
        """The model of ``config``: one DiT, or two experts switched at ``config.boundary`` (Wan2.2-A14B)."""
        if getattr(config, "boundary", None) is not None:
            return Experts(config, self.model_class)
        return self.model_class(config)


FAMILIES: dict[str, ModelFamily] = {
    "wan": ModelFamily("wan", WAN_PRESETS, WanConfig, wan_config, WanModel, _wan_conditions),
    "hunyuan": ModelFamily("hunyuan", HUNYUAN_PRESETS, HunyuanConfig, hunyuan_config, HunyuanModel,
                           _hunyuan_conditions),
    "hunyuan15": ModelFamily("hunyuan15", HUNYUAN15_PRESETS, HunyuanVideo15Config, hunyuan15_config,
                             HunyuanVideo15Model, _hunyuan15_conditions),
}
ALL_PRESETS: dict[str, str] = {preset: fam.name for fam in FAMILIES.values() for preset in fam.presets}
"""Every preset name and the family it belongs to."""


def family_of_preset(preset: str) -> ModelFamily:
    if preset not in ALL_PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; known presets: {', '.join(ALL_PRESETS)}")
    return FAMILIES[ALL_PRESETS[preset]]


def family_of_config(config: VideoDiTConfig) -> ModelFamily:
    for fam in FAMILIES.values():
        if isinstance(config, fam.config_class):
            return fam
    raise ConfigError(f"no model family for config type {type(config).__name__}")


def build_empty(config: VideoDiTConfig, device: torch.device | str) -> torch.nn.Module:
    """The model of ``config`` with uninitialised storage on ``device`` (built on the meta device: no
    memory, no random init), for weights loaded right after. Keeps the attributes megatron-core and
    pose_mcore set on parameters (TP partitioning, sequence-parallel tags), which ``to_empty`` drops."""
    if detect_fake_mode() is not None:  # a memory trace (evaluation/memory_model.py): fake tensors cost nothing
        return family_of_config(config).build(config).to(device)
    with torch.device("meta"):
        model = family_of_config(config).build(config)
    attributes = {name: dict(vars(p)) for name, p in model.named_parameters()}
    model = model.to_empty(device=device)
    for name, p in model.named_parameters():
        for key, value in attributes[name].items():
            setattr(p, key, value)
    return model


def cast_weights(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """``module`` with its floating-point parameters in ``dtype`` (in place; buffers such as rotary tables keep
    their precision). Sets ``data`` rather than using ``module.to``, which cannot swap fake tensors (the
    memory model traces on them)."""
    with torch.no_grad():
        for p in module.parameters():
            if p.is_floating_point() and p.dtype != dtype:
                p.data = p.data.to(dtype)
    return module


def clone_model(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of a DiT with the same weights and TP layout (``deepcopy`` cannot copy process groups), in the
    dtype of its config's parameters (fp32 unless the config says otherwise)."""
    device = next(model.parameters()).device
    copy = build_empty(model.config, device)
    copy.load_state_dict(model.state_dict())
    return copy.train(model.training)
