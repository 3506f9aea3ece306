"""Fields and checks shared by the video DiT configurations (Wan, HunyuanVideo).

Each configuration is megatron-core's ``TransformerConfig`` (parallel sizes, dtype, recompute,
initialisation) plus architecture fields; ``ARCH_FIELDS`` names the fields a checkpoint's
config.json records.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
from megatron.core import parallel_state
from megatron.core.transformer.transformer_config import TransformerConfig

ATTN_IMPLS = ("auto", "sdpa", "flash")
TRANSFORMER_IMPLS = ("auto", "local", "transformer_engine")

RECOMPUTE_EVERY_BLOCK: dict[str, Any] = dict(recompute_granularity="full", recompute_method="uniform",
                                             recompute_num_layers=1)
"""Overrides that turn on activation checkpointing of every block."""
SELECTIVE_MODULES = ("core_attn", "mlp")
"""What ``recompute_granularity="selective"`` can recompute here (megatron-core's names): the attention kernel,
the feed-forward blocks."""


def selective_recompute(config: TransformerConfig, module: str) -> bool:
    """Whether ``module`` (one of :data:`SELECTIVE_MODULES`) is checkpointed on its own: megatron-core's
    ``recompute_granularity="selective"`` with ``module`` in ``recompute_modules`` (default ``["core_attn"]``),
    while gradients are being recorded."""
    modules = config.recompute_modules if config.recompute_modules is not None else ["core_attn"]
    return config.recompute_granularity == "selective" and module in modules and torch.is_grad_enabled()


class ConfigError(ValueError):
    """A configuration that cannot work; the message names the value and the rule."""


@dataclass
class VideoDiTConfig(TransformerConfig):
    """Architecture fields every video DiT has, on top of megatron-core's ``TransformerConfig``."""

    ARCH_FIELDS: ClassVar[tuple[str, ...]] = ("num_layers", "hidden_size", "num_attention_heads", "ffn_hidden_size",
                                              "layernorm_epsilon", "patch_size", "in_channels", "out_channels",
                                              "rope_theta")

    patch_size: tuple[int, int, int] = (1, 2, 2)
    """Patch size over (frames, height, width) of the latent video."""
    in_channels: int = 16
    """Latent channels entering the patch embedding (I2V adds condition channels)."""
    out_channels: int = 16
    """Channels of the predicted velocity."""
    rope_theta: float = 10000.0
    """Base of the 3-D rotary embedding."""
    attn_impl: str = "auto"
    """Attention kernel: 'sdpa' (torch), 'flash' (flash-attn), or 'auto' (flash-attn when usable)."""
    transformer_impl: str = "auto"
    """Linear layers: 'local' (megatron-core), 'transformer_engine', or 'auto' (TE when installed with CUDA)."""
    layernorm_epsilon: float = 1e-6
    use_cpu_initialization: bool = True
    """megatron-core's switch, on by default on every machine: each weight is built whole on the CPU and
    this rank keeps its slice, so one seed gives the same model at any TP size and on any device; the
    built model is then moved to its device as a whole (``model.to(device)``). Models loaded from a
    checkpoint are built on the meta device and never initialised."""

    def __post_init__(self) -> None:
        self.patch_size = tuple(int(p) for p in self.patch_size)
        self.check()
        super().__post_init__()

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def fail(self, message: str) -> None:
        raise ConfigError(f"invalid {type(self).__name__}: {message}")

    def check(self) -> None:
        """Reject configurations that cannot work, naming the value and the rule."""
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            self.fail(f"patch_size={self.patch_size} must be three positive integers (frames, height, width)")
        for name in ("num_layers", "hidden_size", "num_attention_heads", "in_channels", "out_channels"):
            if getattr(self, name) < 1:
                self.fail(f"{name}={getattr(self, name)} must be a positive integer")
        if self.hidden_size % self.num_attention_heads:
            self.fail(f"hidden_size={self.hidden_size} must be divisible by "
                      f"num_attention_heads={self.num_attention_heads}")
        tp = self.tensor_model_parallel_size
        if self.num_attention_heads % tp:
            self.fail(f"num_attention_heads={self.num_attention_heads} must be divisible by "
                      f"tensor_model_parallel_size={tp}: each rank holds whole heads")
        cp = self.context_parallel_size
        if self.num_attention_heads % (tp * cp):
            self.fail(f"num_attention_heads={self.num_attention_heads} must be divisible by tensor_model_parallel_size="
                      f"{tp} x context_parallel_size={cp}: Ulysses attention gives each CP rank whole heads of "
                      "its TP rank's")
        if self.ffn_hidden_size is not None and self.ffn_hidden_size % tp:
            self.fail(f"ffn_hidden_size={self.ffn_hidden_size} must be divisible by tensor_model_parallel_size={tp}")
        if self.attn_impl not in ATTN_IMPLS:
            self.fail(f"attn_impl={self.attn_impl!r} must be one of {ATTN_IMPLS}")
        if self.transformer_impl not in TRANSFORMER_IMPLS:
            self.fail(f"transformer_impl={self.transformer_impl!r} must be one of {TRANSFORMER_IMPLS}")
        unknown = sorted(set(self.recompute_modules or []) - set(SELECTIVE_MODULES))
        if self.recompute_granularity == "selective" and unknown:
            self.fail(f"recompute_modules={list(self.recompute_modules)}: {unknown} cannot be recomputed on their own "
                      f"here (selective recompute knows {list(SELECTIVE_MODULES)}; 'full' recomputes whole blocks)")

    def check_tensor_parallel_group(self) -> None:
        """The initialised tensor- and context-parallel groups must have ``tensor_model_parallel_size`` and
        ``context_parallel_size`` ranks."""
        tp = parallel_state.get_tensor_model_parallel_world_size()
        if tp != self.tensor_model_parallel_size:
            raise ConfigError(f"{type(self).__name__}.tensor_model_parallel_size={self.tensor_model_parallel_size} "
                              f"but the initialised tensor-parallel group has {tp} ranks")
        cp = parallel_state.get_context_parallel_world_size()
        if cp != self.context_parallel_size:
            raise ConfigError(f"{type(self).__name__}.context_parallel_size={self.context_parallel_size} "
                              f"but the initialised context-parallel group has {cp} ranks")

    def recompute_block(self, index: int) -> bool:
        """Whether block ``index`` is activation-checkpointed: megatron's ``recompute_granularity='full'``
        with method 'uniform' checkpoints every block, 'block' the first ``recompute_num_layers``."""
        if self.recompute_granularity != "full" or not torch.is_grad_enabled():
            return False
        return self.recompute_method == "uniform" or index < (self.recompute_num_layers or 0)

    def check_rope_axes(self, axes: tuple[int, int, int]) -> None:
        if len(axes) != 3 or sum(axes) != self.head_dim or any(a < 2 or a % 2 for a in axes):
            self.fail(f"rotary axes {tuple(axes)} must be three even positive sizes summing to the head dim "
                      f"{self.head_dim} (hidden_size / num_attention_heads)")

    def architecture(self) -> dict[str, Any]:
        """The architecture fields as JSON-able values (what a checkpoint's config.json holds)."""
        return {name: list(v) if isinstance(v := getattr(self, name), tuple) else v for name in self.ARCH_FIELDS}


ConfigT = TypeVar("ConfigT", bound=VideoDiTConfig)


def config_from_preset(cls: type[ConfigT], presets: dict[str, dict[str, Any]], preset: str,
                       **overrides: Any) -> ConfigT:
    """Build ``cls`` from a preset name plus field overrides (parallel sizes, dtype, ...)."""
    if preset not in presets:
        raise ConfigError(f"unknown {cls.__name__} preset {preset!r}; known presets: {', '.join(presets)}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s) {unknown} for preset {preset!r}")
    return cls(**{**presets[preset], **overrides})
