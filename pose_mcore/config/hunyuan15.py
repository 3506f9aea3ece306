"""HunyuanVideo-1.5 DiT configuration and presets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from pose_mcore.config.base import config_from_preset
from pose_mcore.config.hunyuan import HunyuanFamilyConfig

TASK_TYPES = ("t2v", "i2v")


@dataclass
class HunyuanVideo15Config(HunyuanFamilyConfig):
    """Architecture of a HunyuanVideo-1.5 DiT: ``num_layers`` dual-stream blocks over the video tokens and
    three context streams (LLM text through a token refiner, ByT5 glyph text, SigLIP image tokens)."""

    ARCH_FIELDS: ClassVar[tuple[str, ...]] = HunyuanFamilyConfig.ARCH_FIELDS + (
        "glyph_dim", "glyph_hidden_dim", "image_dim", "use_meanflow", "task_type", "target_size")

    text_dim: int = 3584
    """Width of the LLM (Qwen2.5-VL) text tokens."""
    glyph_dim: int = 1472
    """Width of the glyph (ByT5) text tokens."""
    glyph_hidden_dim: int = 2048
    """Hidden width of the glyph projection (2048 in every released model and in diffusers)."""
    image_dim: int = 1152
    """Width of the SigLIP image tokens (image-to-video)."""
    use_meanflow: bool = False
    """Embed a second timestep ``timestep_r`` (the mean-flow models: the interval's other end)."""
    task_type: str = "i2v"
    """What the checkpoint was trained for ('t2v' or 'i2v'); the same network either way."""
    target_size: int = 640
    """The pipelines' default resolution in pixels (640 for the 480p models, 960 for 720p)."""

    def check(self) -> None:
        super().check()
        for name in ("glyph_dim", "glyph_hidden_dim", "image_dim", "target_size"):
            if getattr(self, name) < 1:
                self.fail(f"{name}={getattr(self, name)} must be a positive integer")
        if self.task_type not in TASK_TYPES:
            self.fail(f"task_type={self.task_type!r} must be one of {TASK_TYPES}")
        if self.in_channels != 2 * self.out_channels + 1:
            self.fail(f"in_channels={self.in_channels} must be 2 * out_channels + 1 = {2 * self.out_channels + 1}: "
                      "the latents, the condition latents and the condition mask")


_8B = dict(num_layers=54, num_refiner_layers=2, hidden_size=2048, num_attention_heads=16, ffn_hidden_size=4 * 2048,
           patch_size=(1, 1, 1), in_channels=65, out_channels=32, text_dim=3584, glyph_dim=1472, image_dim=1152,
           rope_axes_dim=(16, 56, 56))
_TINY = dict(num_layers=2, num_refiner_layers=1, hidden_size=32, num_attention_heads=4, ffn_hidden_size=64,
             patch_size=(1, 1, 1), in_channels=9, out_channels=4, text_dim=16, glyph_dim=12, image_dim=10,
             rope_axes_dim=(2, 2, 4), target_size=32)

HUNYUAN15_PRESETS: dict[str, dict[str, Any]] = {
    "hunyuan1.5-t2v-480p": dict(_8B, task_type="t2v", target_size=640),
    "hunyuan1.5-i2v-480p": dict(_8B, task_type="i2v", target_size=640),
    "hunyuan1.5-t2v-720p": dict(_8B, task_type="t2v", target_size=960),
    "hunyuan1.5-i2v-720p": dict(_8B, task_type="i2v", target_size=960),
    "tiny-hunyuan1.5-t2v": dict(_TINY, task_type="t2v"),
    "tiny-hunyuan1.5-i2v": dict(_TINY, task_type="i2v"),
    "tiny-hunyuan1.5-meanflow": dict(_TINY, task_type="i2v", use_meanflow=True),
}
"""HunyuanVideo-1.5 8.3B T2V and I2V at 480p and 720p (dims from diffusers' conversion configs; the
step-distilled checkpoints share them), and tiny models (whose pipelines pick 32-pixel-area sizes)."""


def hunyuan15_config(preset: str, **overrides: Any) -> HunyuanVideo15Config:
    """A :class:`HunyuanVideo15Config` from a preset name plus field overrides."""
    return config_from_preset(HunyuanVideo15Config, HUNYUAN15_PRESETS, preset, **overrides)
