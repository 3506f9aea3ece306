"""Wan DiT configuration: megatron-core's ``TransformerConfig`` plus Wan's architecture fields.

The parallel fields (``tensor_model_parallel_size``, ``sequence_parallel``, ...) and training fields
(``recompute_granularity``, ``params_dtype``, ...) are megatron-core's own; the fields added here
describe the architecture. :data:`WAN_PRESETS` holds the published models and tiny test models.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from megatron.core.transformer.transformer_config import TransformerConfig

# Fields that define the architecture (and therefore a checkpoint); everything else is runtime.
WAN_ARCH_FIELDS = (
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "ffn_hidden_size",
    "layernorm_epsilon",
    "patch_size",
    "in_channels",
    "out_channels",
    "text_dim",
    "freq_dim",
    "image_dim",
    "cross_attn_norm",
    "rope_theta",
)

RECOMPUTE_EVERY_BLOCK: dict[str, Any] = dict(recompute_granularity="full", recompute_method="uniform",
                                             recompute_num_layers=1)
"""Overrides that turn on activation checkpointing of every block."""

_ATTN_IMPLS = ("auto", "sdpa", "flash")
_TRANSFORMER_IMPLS = ("auto", "local", "transformer_engine")


def _default_cpu_init() -> bool:
    # Without CUDA, build each weight whole on the CPU and keep this rank's slice: the same seed then
    # gives the same model at every tensor-parallel size.
    return not torch.cuda.is_available()


@dataclass
class WanConfig(TransformerConfig):
    """Architecture of a Wan2.1 / Wan2.2 DiT on top of megatron-core's ``TransformerConfig``."""

    patch_size: tuple[int, int, int] = (1, 2, 2)
    """Patch size over (frames, height, width) of the latent video."""
    in_channels: int = 16
    """Latent channels entering the patch embedding (I2V: noisy latent + mask + condition latent)."""
    out_channels: int = 16
    """Channels of the predicted velocity."""
    text_dim: int = 4096
    """Width of the text-encoder embeddings (umT5: 4096)."""
    freq_dim: int = 256
    """Width of the sinusoidal timestep embedding."""
    image_dim: int | None = None
    """Width of the CLIP image tokens (Wan2.1 I2V: 1280); None disables the image key/value branch."""
    cross_attn_norm: bool = True
    """LayerNorm (with affine) before cross-attention."""
    rope_theta: float = 10000.0
    """Base of the 3-D rotary embedding."""
    attn_impl: str = "auto"
    """Attention kernel: 'sdpa' (torch), 'flash' (flash-attn), or 'auto' (flash-attn when usable)."""
    transformer_impl: str = "auto"
    """Linear layers: 'local' (megatron-core), 'transformer_engine', or 'auto' (TE when installed with CUDA)."""
    layernorm_epsilon: float = 1e-6
    use_cpu_initialization: bool = field(default_factory=_default_cpu_init)

    def __post_init__(self) -> None:
        self.patch_size = tuple(int(p) for p in self.patch_size)
        _check_wan(self)
        super().__post_init__()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rope_axes_dim(self) -> tuple[int, int, int]:
        """Rotary channels per (frame, height, width) axis, split as the official Wan code does."""
        hw = 2 * (self.head_dim // 6)
        return (self.head_dim - 2 * hw, hw, hw)

    def architecture(self) -> dict[str, Any]:
        """The architecture fields as plain JSON-able values (what a checkpoint's config.json holds)."""
        out = {name: getattr(self, name) for name in WAN_ARCH_FIELDS}
        out["patch_size"] = list(out["patch_size"])
        return out


def _check_wan(cfg: WanConfig) -> None:
    """Reject configurations that cannot work, naming the value and the rule."""

    def fail(msg: str) -> None:
        raise ValueError(f"invalid WanConfig: {msg}")

    if len(cfg.patch_size) != 3 or min(cfg.patch_size) < 1:
        fail(f"patch_size={cfg.patch_size} must be three positive integers (frames, height, width)")
    for name in ("num_layers", "hidden_size", "num_attention_heads", "in_channels", "out_channels",
                 "text_dim", "freq_dim"):
        if getattr(cfg, name) < 1:
            fail(f"{name}={getattr(cfg, name)} must be a positive integer")
    if cfg.hidden_size % cfg.num_attention_heads:
        fail(f"hidden_size={cfg.hidden_size} must be divisible by num_attention_heads={cfg.num_attention_heads}")
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    if head_dim % 2 or head_dim < 6:
        fail(f"head dim {head_dim} (hidden_size / num_attention_heads) must be even and at least 6: "
             "the 3-D rotary embedding splits it into three even parts")
    tp = cfg.tensor_model_parallel_size
    if cfg.num_attention_heads % tp:
        fail(f"num_attention_heads={cfg.num_attention_heads} must be divisible by "
             f"tensor_model_parallel_size={tp}: each rank holds whole heads")
    if cfg.ffn_hidden_size is not None and cfg.ffn_hidden_size % tp:
        fail(f"ffn_hidden_size={cfg.ffn_hidden_size} must be divisible by tensor_model_parallel_size={tp}")
    if cfg.image_dim is not None and cfg.image_dim < 1:
        fail(f"image_dim={cfg.image_dim} must be a positive integer or None")
    if cfg.attn_impl not in _ATTN_IMPLS:
        fail(f"attn_impl={cfg.attn_impl!r} must be one of {_ATTN_IMPLS}")
    if cfg.transformer_impl not in _TRANSFORMER_IMPLS:
        fail(f"transformer_impl={cfg.transformer_impl!r} must be one of {_TRANSFORMER_IMPLS}")


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
    "tiny-t2v": dict(_TINY),
    "tiny-i2v": dict(_TINY, in_channels=12, image_dim=24),
}
"""Published Wan models (dims from the official configs) and tiny models for tests."""


def wan_config(preset: str, **overrides: Any) -> WanConfig:
    """Build a :class:`WanConfig` from a preset name plus field overrides (parallel sizes, dtype, ...)."""
    if preset not in WAN_PRESETS:
        raise ValueError(f"unknown Wan preset {preset!r}; known presets: {', '.join(WAN_PRESETS)}")
    known = {f.name for f in dataclasses.fields(WanConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown WanConfig field(s) {unknown} for preset {preset!r}")
    return WanConfig(**{**WAN_PRESETS[preset], **overrides})
