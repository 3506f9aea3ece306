"""HunyuanVideo DiT configuration and presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pose_mcore.config.base import VideoDiTConfig, config_from_preset

IMAGE_CONDITION_TYPES = (None, "latent_concat", "token_replace")


@dataclass
class HunyuanFamilyConfig(VideoDiTConfig):
    """What HunyuanVideo and HunyuanVideo-1.5 share: the text token refiner over LLM tokens, dual-stream blocks,
    rotary channels given per (frame, height, width) axis."""

    ARCH_FIELDS: ClassVar[tuple[str, ...]] = VideoDiTConfig.ARCH_FIELDS + (
        "num_refiner_layers", "text_dim", "rope_axes_dim")

    num_refiner_layers: int = 2
    """Blocks of the text token refiner."""
    text_dim: int = 4096
    """Width of the LLM text-encoder tokens."""
    rope_axes_dim: tuple[int, int, int] = (16, 56, 56)
    """Rotary channels per (frame, height, width) axis."""
    rope_theta: float = 256.0

    def __post_init__(self) -> None:
        self.rope_axes_dim = tuple(int(a) for a in self.rope_axes_dim)
        super().__post_init__()

    def check(self) -> None:
        super().check()
        self.check_rope_axes(self.rope_axes_dim)
        for name in ("num_refiner_layers", "text_dim"):
            if getattr(self, name) < 1:
                self.fail(f"{name}={getattr(self, name)} must be a positive integer")


@dataclass
class HunyuanConfig(HunyuanFamilyConfig):
    """Architecture of a HunyuanVideo DiT. ``num_layers`` counts the dual-stream blocks;
    ``ffn_hidden_size`` is ``mlp_ratio * hidden_size`` (also the single-stream MLP width)."""

    ARCH_FIELDS: ClassVar[tuple[str, ...]] = HunyuanFamilyConfig.ARCH_FIELDS + (
        "num_single_layers", "pooled_dim", "guidance_embeds", "image_condition_type")

    num_single_layers: int = 40
    """Single-stream blocks after the dual-stream ones."""
    pooled_dim: int = 768
    """Width of the pooled CLIP text vector."""
    guidance_embeds: bool = True
    """Embed the (distilled) guidance scale, as HunyuanVideo T2V does."""
    image_condition_type: str | None = None
    """Image-to-video: None (T2V), 'latent_concat' (condition latent as extra channels) or 'token_replace'
    (the clean first-frame latent replaces the first frame's tokens, with its own modulation)."""

    def check(self) -> None:
        super().check()
        if self.num_single_layers < 0:
            self.fail(f"num_single_layers={self.num_single_layers} must be a non-negative integer")
        if self.pooled_dim < 1:
            self.fail(f"pooled_dim={self.pooled_dim} must be a positive integer")
        if self.image_condition_type not in IMAGE_CONDITION_TYPES:
            self.fail(f"image_condition_type={self.image_condition_type!r} must be one of {IMAGE_CONDITION_TYPES}")
        if self.image_condition_type == "token_replace" and self.patch_size[0] != 1:
            self.fail(f"image_condition_type='token_replace' needs a temporal patch of 1 (the first latent frame's "
                      f"tokens are replaced); patch_size={self.patch_size}")


_13B = dict(num_layers=20, num_single_layers=40, num_refiner_layers=2, hidden_size=3072, num_attention_heads=24,
            ffn_hidden_size=4 * 3072, patch_size=(1, 2, 2), in_channels=16, out_channels=16, text_dim=4096,
            pooled_dim=768, guidance_embeds=True, rope_axes_dim=(16, 56, 56))
_TINY = dict(num_layers=2, num_single_layers=2, num_refiner_layers=1, hidden_size=32, num_attention_heads=4,
             ffn_hidden_size=64, patch_size=(1, 2, 2), in_channels=4, out_channels=4, text_dim=16, pooled_dim=8,
             guidance_embeds=True, rope_axes_dim=(2, 2, 4))

HUNYUAN_PRESETS: dict[str, dict[str, Any]] = {
    "hunyuan-t2v-13b": dict(_13B),
    "hunyuan-i2v-13b": dict(_13B, in_channels=33, guidance_embeds=False, image_condition_type="latent_concat"),
    "hunyuan-i2v-13b-token-replace": dict(_13B, image_condition_type="token_replace"),
    "tiny-hunyuan-t2v": dict(_TINY),
    "tiny-hunyuan-i2v": dict(_TINY, in_channels=9, guidance_embeds=False, image_condition_type="latent_concat"),
    "tiny-hunyuan-i2v-token-replace": dict(_TINY, image_condition_type="token_replace"),
}
"""HunyuanVideo T2V and I2V (both conditioning modes; dims from the official configs), and tiny models."""


def hunyuan_config(preset: str, **overrides: Any) -> HunyuanConfig:
    """A :class:`HunyuanConfig` from a preset name plus field overrides."""
    return config_from_preset(HunyuanConfig, HUNYUAN_PRESETS, preset, **overrides)
