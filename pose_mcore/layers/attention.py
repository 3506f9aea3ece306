"""Attention over tensor-parallel heads: the kernel choice, and the self- and cross-attention layers.

Activations are sequence-first ``[s, b, h]`` (megatron-core's layout). Projections are
column-parallel over heads and the output projection row-parallel, so each TP rank attends with
its own heads. With sequence parallelism the column-parallel projections of the video tokens
gather the sequence and the output projection reduce-scatters it again; text and image context
is replicated, so its key/value projections are built without sequence parallelism.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_config import TransformerConfig

from pose_mcore.layers.rotary import apply_rotary

_flash_attn_func = None


def resolve_attn_impl(requested: str, q: torch.Tensor) -> str:
    """'flash' when asked (or 'auto') and flash-attn can run on ``q`` (CUDA, fp16/bf16), else 'sdpa'."""
    usable = q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)
    if requested == "flash":
        if not usable or importlib.util.find_spec("flash_attn") is None:
            raise RuntimeError("attn_impl='flash' needs flash-attn installed and CUDA fp16/bf16 inputs; "
                               f"got device={q.device}, dtype={q.dtype}")
        return "flash"
    if requested == "auto" and usable and importlib.util.find_spec("flash_attn") is not None:
        return "flash"
    return "sdpa"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: str = "auto") -> torch.Tensor:
    """Softmax attention of ``q [b, h, sq, d]`` over ``k, v [b, h, sk, d]`` with scale ``d ** -0.5``."""
    if resolve_attn_impl(impl, q) == "flash":
        global _flash_attn_func
        if _flash_attn_func is None:
            from flash_attn import flash_attn_func

            _flash_attn_func = flash_attn_func
        out = _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return out.transpose(1, 2)
    return F.scaled_dot_product_attention(q, k, v)


def split_heads(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """``[s, b, n*d]`` -> ``[b, n, s, d]``."""
    s, b, _ = x.shape
    return x.view(s, b, -1, head_dim).permute(1, 2, 0, 3)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``[b, n, s, d]`` -> ``[s, b, n*d]``."""
    b, n, s, d = x.shape
    return x.permute(2, 0, 1, 3).reshape(s, b, n * d)


def without_sequence_parallel(config: TransformerConfig) -> TransformerConfig:
    """A copy of ``config`` for layers fed replicated (not sequence-split) inputs."""
    if not config.sequence_parallel:
        return config
    return dataclasses.replace(config, sequence_parallel=False)


@dataclass
class AttentionSubmodules:
    """Layer classes (or specs) of an attention block; ``linear_*_img`` only for image context."""

    linear_q: ModuleSpec | type
    linear_k: ModuleSpec | type
    linear_v: ModuleSpec | type
    linear_proj: ModuleSpec | type
    q_norm: ModuleSpec | type
    k_norm: ModuleSpec | type
    linear_k_img: ModuleSpec | type | None = None
    linear_v_img: ModuleSpec | type | None = None
    k_img_norm: ModuleSpec | type | None = None


class _HeadParallelAttention(MegatronModule):
    """Shared construction: q/k/v column-parallel over heads, q/k RMSNorm over all heads, output row-parallel."""

    def __init__(self, config: TransformerConfig, submodules: AttentionSubmodules, kv_config: TransformerConfig):
        super().__init__(config)
        d = config.hidden_size
        self.head_dim = d // config.num_attention_heads
        self.attn_impl = getattr(config, "attn_impl", "auto")
        col = dict(init_method=config.init_method, bias=True, gather_output=False, skip_bias_add=False,
                   is_expert=False)
        self.linear_q = build_module(submodules.linear_q, d, d, config=config, **col)
        self.linear_k = build_module(submodules.linear_k, d, d, config=kv_config, **col)
        self.linear_v = build_module(submodules.linear_v, d, d, config=kv_config, **col)
        self.q_norm = build_module(submodules.q_norm, d, eps=config.layernorm_epsilon)
        self.k_norm = build_module(submodules.k_norm, d, eps=config.layernorm_epsilon)
        self.linear_proj = build_module(submodules.linear_proj, d, d, config=config,
                                        init_method=config.output_layer_init_method, bias=True,
                                        input_is_parallel=True, skip_bias_add=False, is_expert=False)
        self.heads_per_rank = config.num_attention_heads // parallel_state.get_tensor_model_parallel_world_size()

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        return self.q_norm(self.linear_q(x)[0])

    def _keys_values(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k_norm(self.linear_k(ctx)[0]), self.linear_v(ctx)[0]

    def _out(self, heads: torch.Tensor) -> torch.Tensor:
        return self.linear_proj(merge_heads(heads))[0]


class SelfAttention(_HeadParallelAttention):
    """Self-attention over video tokens with 3-D rotary embedding on q and k."""

    def __init__(self, config: TransformerConfig, submodules: AttentionSubmodules) -> None:
        super().__init__(config, submodules, kv_config=config)

    def forward(self, x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], key_length: int) -> torch.Tensor:
        """``x [s_local, b, h]``; ``rotary`` cos/sin ``[s_full, head_dim]``; keys past ``key_length`` are padding."""
        cos, sin = (r[:, None, None, :] for r in rotary)
        q = apply_rotary(self._queries(x).unflatten(-1, (-1, self.head_dim)), cos, sin)
        k, v = self._keys_values(x)
        k = apply_rotary(k.unflatten(-1, (-1, self.head_dim)), cos, sin)
        q, k = q.flatten(-2), k.flatten(-2)
        k, v = k[:key_length], v[:key_length]
        out = attention(split_heads(q, self.head_dim), split_heads(k, self.head_dim), split_heads(v, self.head_dim),
                        self.attn_impl)
        return self._out(out)


class CrossAttention(_HeadParallelAttention):
    """Cross-attention from video tokens to text tokens, plus an optional image-token branch whose
    output is added (Wan2.1 I2V's extra key/value projections)."""

    def __init__(self, config: TransformerConfig, submodules: AttentionSubmodules, image_context: bool = False):
        kv_config = without_sequence_parallel(config)
        super().__init__(config, submodules, kv_config=kv_config)
        self.image_context = image_context
        if image_context:
            d = config.hidden_size
            col = dict(config=kv_config, init_method=config.init_method, bias=True, gather_output=False,
                       skip_bias_add=False, is_expert=False)
            self.linear_k_img = build_module(submodules.linear_k_img, d, d, **col)
            self.linear_v_img = build_module(submodules.linear_v_img, d, d, **col)
            self.k_img_norm = build_module(submodules.k_img_norm, d, eps=config.layernorm_epsilon)

    def forward(self, x: torch.Tensor, context: torch.Tensor,
                image_context: torch.Tensor | None = None) -> torch.Tensor:
        """``x [s_local, b, h]`` attends to ``context [l, b, h]`` (and ``image_context [m, b, h]``)."""
        q = split_heads(self._queries(x), self.head_dim)
        k, v = self._keys_values(context)
        out = attention(q, split_heads(k, self.head_dim), split_heads(v, self.head_dim), self.attn_impl)
        if self.image_context:
            if image_context is None:
                raise ValueError("this model has an image branch: encoder_hidden_states_image is required")
            k_img = self.k_img_norm(self.linear_k_img(image_context)[0])
            v_img = self.linear_v_img(image_context)[0]
            out = out + attention(q, split_heads(k_img, self.head_dim), split_heads(v_img, self.head_dim),
                                  self.attn_impl)
        return self._out(out)
