"""Wan2.1 / Wan2.2 DiT configuration and presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pose_mcore.config.base import RECOMPUTE_EVERY_BLOCK, VideoDiTConfig, config_from_preset

__all__ = ["RECOMPUTE_EVERY_BLOCK", "WAN_PRESETS", "WanConfig", "wan_config"]


@dataclass
class WanConfig(VideoDiTConfig):
    """Architecture of a Wan2.1 / Wan2.2 DiT (see :class:`VideoDiTConfig` for the shared fields)."""

    ARCH_FIELDS: ClassVar[tuple[str, ...]] = VideoDiTConfig.ARCH_FIELDS + ("text_dim", "freq_dim", "image_dim",
                                                                           "cross_attn_norm", "image_condition_type",
                                                                           "boundary")

    text_dim: int = 4096
    """Width of the text-encoder embeddings (umT5: 4096)."""
    freq_dim: int = 256
    """Width of the sinusoidal timestep embedding."""
    image_dim: int | None = None
    """Width of the CLIP image tokens (Wan2.1 I2V: 1280); None disables the image key/value branch."""
    cross_attn_norm: bool = True
    """LayerNorm (with affine) before cross-attention."""
    image_condition_type: str | None = None
    """Wan2.2 TI2V image-to-video: None (text-to-video) or 'token_replace' (the clean first-frame latent replaces
    the first latent frame and its tokens get timestep 0, diffusers' ``expand_timesteps``). Not a weight
    layout: the same TI2V weights do both."""
    boundary: float | None = None
    """Wan2.2-A14B: two experts of this architecture, the high-noise one for ``t >= boundary`` and the low-noise
    one below (:class:`pose_mcore.models.experts.Experts`; official ``config.boundary``, diffusers'
    ``boundary_ratio``: T2V 0.875, I2V 0.900). None: one model."""

    @property
    def rope_axes_dim(self) -> tuple[int, int, int]:
        """Rotary channels per (frame, height, width) axis, split as the official Wan code does."""
        hw = 2 * (self.head_dim // 6)
        return (self.head_dim - 2 * hw, hw, hw)

    def check(self) -> None:
        super().check()
        for name in ("text_dim", "freq_dim"):
            if getattr(self, name) < 1:
                self.fail(f"{name}={getattr(self, name)} must be a positive integer")
        if self.head_dim % 2 or self.head_dim < 6:
            self.fail(f"head dim {self.head_dim} (hidden_size / num_attention_heads) must be even and at least 6: "
                      "the 3-D rotary embedding splits it into three even parts")
        if self.image_dim is not None and self.image_dim < 1:
            self.fail(f"image_dim={self.image_dim} must be a positive integer or None")
        if self.image_condition_type not in (None, "token_replace"):
            self.fail(f"image_condition_type={self.image_condition_type!r} must be None or 'token_replace'")
        if self.image_condition_type == "token_replace" and (self.patch_size[0] != 1 or self.image_dim is not None
                                                             or self.in_channels != self.out_channels):
            self.fail("image_condition_type='token_replace' (Wan2.2 TI2V) needs a temporal patch of 1, no CLIP "
                      "image tokens and in_channels == out_channels")
        if self.boundary is not None and not 0 < self.boundary < 1:
            self.fail(f"boundary={self.boundary} must lie strictly between 0 and 1 (a fraction of the 1000 "
                      "timesteps), or be None for one model")


_TINY = dict(num_layers=2, hidden_size=48, num_attention_heads=4, ffn_hidden_size=96, in_channels=4,
             out_channels=4, text_dim=32, freq_dim=16)

WAN_PRESETS: dict[str, dict[str, Any]] = {
    "wan2.1-t2v-1.3b": dict(num_layers=30, hidden_size=1536, num_attention_heads=12, ffn_hidden_size=8960,
                            in_channels=16, out_channels=16),
    "wan2.1-t2v-14b": dict(num_layers=40, hidden_size=5120, num_attention_heads=40, ffn_hidden_size=13824,
                           in_channels=16, out_channels=16),
    "wan2.1-i2v-14b": dict(num_layers=40, hidden_size=5120, num_attention_heads=40, ffn_hidden_size=13824,
                           in_channels=36, out_channels=16, image_dim=1280),
    "wan2.2-ti2v-5b": dict(num_layers=30, hidden_size=3072, num_attention_heads=24, ffn_hidden_size=14336,
                           in_channels=48, out_channels=48),
    "wan2.2-ti2v-5b-i2v": dict(num_layers=30, hidden_size=3072, num_attention_heads=24, ffn_hidden_size=14336,
                               in_channels=48, out_channels=48, image_condition_type="token_replace"),
    "wan2.2-t2v-a14b": dict(num_layers=40, hidden_size=5120, num_attention_heads=40, ffn_hidden_size=13824,
                            in_channels=16, out_channels=16, boundary=0.875),
    "wan2.2-i2v-a14b": dict(num_layers=40, hidden_size=5120, num_attention_heads=40, ffn_hidden_size=13824,
                            in_channels=36, out_channels=16, boundary=0.900),
    "tiny-t2v": dict(_TINY),
    "tiny-i2v": dict(_TINY, in_channels=12, image_dim=24),
    "tiny-ti2v-i2v": dict(_TINY, image_condition_type="token_replace"),
    "tiny-t2v-a14b": dict(_TINY, boundary=0.875),
    "tiny-i2v-a14b": dict(_TINY, in_channels=12, boundary=0.900),
}
"""Published Wan models (dims from the official configs) and tiny models for tests. The A14B models are two
experts of Wan2.1-14B's architecture (I2V: the condition latent and mask concatenated, no CLIP image branch);
their samplers' other settings (shift 12.0 / 5.0; guidance (high, low) noise (4.0, 3.0) / (3.5, 3.5)) are
training and sampling options (the shipped ``wan2.2-*-a14b.yaml`` configs)."""


def wan_config(preset: str, **overrides: Any) -> WanConfig:
    """A :class:`WanConfig` from a preset name plus field overrides."""
    return config_from_preset(WanConfig, WAN_PRESETS, preset, **overrides)
