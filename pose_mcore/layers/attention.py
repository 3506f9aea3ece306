"""Attention over tensor-parallel heads: the kernel choice, and the self- and cross-attention layers.

Activations are sequence-first ``[s, b, h]`` (megatron-core's layout). Projections are
column-parallel over heads and the output projection row-parallel, so each TP rank attends with
its own heads. With sequence parallelism the column-parallel projections of the video tokens
gather the sequence and the output projection reduce-scatters it again; text and image context
is replicated, so its key/value projections are built without sequence parallelism.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from megatron.core.transformer.transformer_config import TransformerConfig
from torch.utils.checkpoint import checkpoint

from pose_mcore.config.base import selective_recompute
from pose_mcore.layers.rotary import apply_rotary
from pose_mcore.parallel.context import gather_heads, heads_to_seq, local_heads, seq_to_heads
from pose_mcore.parallel.sequence import without_sequence_parallel
from pose_mcore.parallel.sharding import grouped_init

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


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, impl: str = "auto",
              mask: torch.Tensor | None = None, recompute: bool = False) -> torch.Tensor:
    """Softmax attention of ``q [b, h, sq, d]`` over ``k, v [b, h, sk, d]`` with scale ``d ** -0.5``.

    ``mask`` (bool, broadcastable to ``[b, h, sq, sk]``, True = attend) is applied with SDPA; the
    flash-attn path is taken only without a mask. ``recompute``: checkpoint the kernel (selective recompute of
    ``"core_attn"``): backward runs it again instead of keeping what it saves.
    """
    if recompute:
        return checkpoint(attention, q, k, v, impl, mask, use_reentrant=False)
    if mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
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


def video_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_length: int, impl: str,
                    text: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                    text_mask: torch.Tensor | None = None, recompute: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention of this rank's video tokens ``q, k, v [s, b, n, d]`` (rotary applied; this rank's heads)
    over every video token (keys past ``key_length`` in the whole padded sequence are padding) and, for a
    joint attention, the replicated text ``text = (q, k, v) [l, b, n, d]`` with its key mask ``[b, l]``.

    Under context parallelism the video q, k, v go through Ulysses' all-to-all (every token, 1/cp of the
    heads) and the output back; each CP rank takes its heads of the text and the text output is gathered
    over the heads again. Returns (video ``[s, b, n*d]``, text ``[l, b, n*d]`` or None)."""
    head_dim = q.shape[-1]
    q, k, v = seq_to_heads(q), seq_to_heads(k), seq_to_heads(v)
    n_video = q.shape[0]
    k, v = k[:key_length], v[:key_length]
    mask = None
    if text is not None:
        qt, kt, vt = (local_heads(t) for t in text)
        q, k, v = torch.cat([q, qt]), torch.cat([k, kt]), torch.cat([v, vt])
        mask = _key_mask(key_length, text_mask)
    out = attention(split_heads(q.flatten(-2), head_dim), split_heads(k.flatten(-2), head_dim),
                    split_heads(v.flatten(-2), head_dim), impl, mask, recompute)
    video = heads_to_seq(merge_heads(out[:, :, :n_video]).unflatten(-1, (-1, head_dim))).flatten(-2)
    if text is None:
        return video, None
    return video, gather_heads(merge_heads(out[:, :, n_video:]).unflatten(-1, (-1, head_dim))).flatten(-2)


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
        """``x [s_local, b, h]``; ``rotary`` cos/sin ``[s, head_dim]`` of this CP rank's tokens (all of them
        without context parallelism); keys past ``key_length`` (in the whole padded sequence) are padding."""
        cos, sin = (r[:, None, None, :] for r in rotary)
        q = apply_rotary(self._queries(x).unflatten(-1, (-1, self.head_dim)), cos, sin)
        k, v = self._keys_values(x)
        k = apply_rotary(k.unflatten(-1, (-1, self.head_dim)), cos, sin)
        out, _ = video_attention(q, k, v.unflatten(-1, (-1, self.head_dim)), key_length, self.attn_impl,
                                 recompute=selective_recompute(self.config, "core_attn"))
        return self.linear_proj(out)[0]


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
        recompute = selective_recompute(self.config, "core_attn")
        out = attention(q, split_heads(k, self.head_dim), split_heads(v, self.head_dim), self.attn_impl,
                        recompute=recompute)
        if self.image_context:
            if image_context is None:
                raise ValueError("this model has an image branch: encoder_hidden_states_image is required")
            k_img = self.k_img_norm(self.linear_k_img(image_context)[0])
            v_img = self.linear_v_img(image_context)[0]
            out = out + attention(q, split_heads(k_img, self.head_dim), split_heads(v_img, self.head_dim),
                                  self.attn_impl, recompute=recompute)
        return self._out(out)


def _key_mask(key_length: int, context_mask: torch.Tensor) -> torch.Tensor:
    """Boolean mask ``[b, 1, 1, key_length + l]`` over keys [video ; text]: every video key, the valid text keys."""
    video = torch.ones(context_mask.shape[0], key_length, dtype=torch.bool, device=context_mask.device)
    return torch.cat([video, context_mask], dim=1)[:, None, None, :]


@dataclass
class JointAttentionSubmodules:
    """Video projections (sequence-split input) and text projections (replicated input)."""

    linear_q: ModuleSpec | type
    linear_k: ModuleSpec | type
    linear_v: ModuleSpec | type
    linear_proj: ModuleSpec | type
    q_norm: ModuleSpec | type
    k_norm: ModuleSpec | type
    linear_q_ctx: ModuleSpec | type
    linear_k_ctx: ModuleSpec | type
    linear_v_ctx: ModuleSpec | type
    linear_proj_ctx: ModuleSpec | type
    q_norm_ctx: ModuleSpec | type
    k_norm_ctx: ModuleSpec | type


class JointAttention(MegatronModule):
    """One attention over [video ; text] tokens with separate projections per stream (HunyuanVideo's
    dual-stream blocks). Video q/k get the 3-D rotary embedding; q/k are RMS-normalised per head;
    padded text tokens are masked as keys. Video projections follow sequence parallelism, text ones
    see the replicated text."""

    def __init__(self, config: TransformerConfig, submodules: JointAttentionSubmodules) -> None:
        super().__init__(config)
        d = config.hidden_size
        self.head_dim = d // config.num_attention_heads
        self.attn_impl = getattr(config, "attn_impl", "auto")
        text_config = without_sequence_parallel(config)
        for stream, cfg in (("", config), ("_ctx", text_config)):
            col = dict(config=cfg, init_method=config.init_method, bias=True, gather_output=False,
                       skip_bias_add=False, is_expert=False)
            for name in ("linear_q", "linear_k", "linear_v"):
                setattr(self, name + stream, build_module(getattr(submodules, name + stream), d, d, **col))
            for name in ("q_norm", "k_norm"):
                setattr(self, name + stream, build_module(getattr(submodules, name + stream), self.head_dim,
                                                          eps=config.layernorm_epsilon))
            setattr(self, "linear_proj" + stream, build_module(
                getattr(submodules, "linear_proj" + stream), d, d, config=cfg,
                init_method=config.output_layer_init_method, bias=True, input_is_parallel=True, skip_bias_add=False,
                is_expert=False))

    def _qkv(self, x: torch.Tensor, stream: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = (getattr(self, f"linear_{n}{stream}")(x)[0].unflatten(-1, (-1, self.head_dim)) for n in "qkv")
        return getattr(self, f"q_norm{stream}")(q), getattr(self, f"k_norm{stream}")(k), v

    def forward(self, x: torch.Tensor, context: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor],
                key_length: int, context_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x [s_local, b, h]``, ``context [l, b, h]``, ``context_mask [b, l]`` -> (video, text) outputs."""
        qv, kv, vv = self._qkv(x, "")
        cos, sin = (r[:, None, None, :] for r in rotary)
        qv, kv = apply_rotary(qv, cos, sin), apply_rotary(kv, cos, sin)
        video, text = video_attention(qv, kv, vv, key_length, self.attn_impl, self._qkv(context, "_ctx"),
                                      context_mask, selective_recompute(self.config, "core_attn"))
        return self.linear_proj(video)[0], self.linear_proj_ctx(text)[0]


@dataclass
class FusedAttentionMLPSubmodules:
    linear_fc1: ModuleSpec | type
    linear_fc2: ModuleSpec | type
    q_norm: ModuleSpec | type
    k_norm: ModuleSpec | type


class FusedAttentionMLP(MegatronModule):
    """HunyuanVideo's single-stream block body: one fused input linear for q, k, v and the MLP, attention
    over [video ; text] in parallel with a tanh-GELU MLP, one fused output linear.

    Tensor-parallel layout (the checkpoint converter depends on it). The whole ``linear_fc1`` weight
    is ``[q | k | v | mlp]`` along its output dim (sizes ``h, h, h, m``, the official order); TP rank
    ``r`` holds ``[q_r | k_r | v_r | mlp_r]``, the r-th of ``tp`` equal chunks of each part: its own
    heads' q, k, v and its slice of the MLP. The whole ``linear_fc2`` weight is ``[attn | mlp]``
    along its input dim (sizes ``h, m``); rank ``r`` holds ``[attn_r | mlp_r]``. Both carry
    ``partition_groups`` so :mod:`pose_mcore.parallel.sharding` cuts and gathers them this way.

    The input is the replicated [video ; text] sequence: under sequence parallelism the block gathers
    the video tokens before and splits them after (see ``models/hunyuan.py``).
    """

    def __init__(self, config: TransformerConfig, submodules: FusedAttentionMLPSubmodules) -> None:
        super().__init__(config)
        d, m = config.hidden_size, config.ffn_hidden_size
        self.head_dim = d // config.num_attention_heads
        self.attn_impl = getattr(config, "attn_impl", "auto")
        tp = parallel_state.get_tensor_model_parallel_world_size()
        self.local_sizes = (d // tp, d // tp, d // tp, m // tp)
        cfg = without_sequence_parallel(config)
        self.linear_fc1 = build_module(submodules.linear_fc1, d, 3 * d + m, config=cfg,
                                       init_method=grouped_init(config.init_method, (d, d, d, m), 0),
                                       bias=True, gather_output=False, skip_bias_add=False, is_expert=False)
        self.linear_fc2 = build_module(submodules.linear_fc2, d + m, d, config=cfg,
                                       init_method=grouped_init(config.output_layer_init_method, (d, m), 1), bias=True,
                                       input_is_parallel=True, skip_bias_add=False, is_expert=False)
        self.linear_fc1.weight.partition_groups = self.linear_fc1.bias.partition_groups = (d, d, d, m)
        self.linear_fc2.weight.partition_groups = (d, m)
        self.q_norm = build_module(submodules.q_norm, self.head_dim, eps=config.layernorm_epsilon)
        self.k_norm = build_module(submodules.k_norm, self.head_dim, eps=config.layernorm_epsilon)

    def forward(self, x: torch.Tensor, n_video: int, rotary: tuple[torch.Tensor, torch.Tensor], key_length: int,
                context_mask: torch.Tensor) -> torch.Tensor:
        """``x [n_video + l, b, h]`` (video first, ``n_video`` of them incl. padding) -> ``[n_video + l, b, h]``."""
        q, k, v, mlp = self.linear_fc1(x)[0].split(self.local_sizes, dim=-1)
        q = self.q_norm(q.unflatten(-1, (-1, self.head_dim)))
        k = self.k_norm(k.unflatten(-1, (-1, self.head_dim)))
        v = v.unflatten(-1, (-1, self.head_dim))
        cos, sin = (r[:, None, None, :] for r in rotary)
        video, text = video_attention(apply_rotary(q[:n_video], cos, sin), apply_rotary(k[:n_video], cos, sin),
                                      v[:n_video], key_length, self.attn_impl,
                                      (q[n_video:], k[n_video:], v[n_video:]), context_mask,
                                      selective_recompute(self.config, "core_attn"))
        return self.linear_fc2(torch.cat([torch.cat([video, text]), F.gelu(mlp, approximate="tanh")], dim=-1))[0]
