"""The HunyuanVideo DiT (T2V and I2V) on megatron-core tensor- and sequence-parallel layers.

Reads top to bottom: the text token refiner, the dual-stream block, the single-stream block, the
model. ``HunyuanModel.forward`` takes and returns what diffusers' ``HunyuanVideoTransformer3DModel``
does, so it can stand in for it.

Data path (``s`` video tokens, ``l`` text tokens, ``b`` batch, ``d`` hidden; sequence-first):

    video [b, c, f, h, w] -> 3-D patches -> tokens [s, b, d]
    timestep, pooled CLIP vector (, guidance) -> temb [b, d]   (token replace: a second temb at t = 0)
    LLM text tokens [b, l, text_dim] -> refiner (masked self-attention, AdaLN gates) -> context [l, b, d]
    dual-stream blocks: per-stream AdaLN, one attention over [video ; text] (rotary on video only,
        padded text keys masked), per-stream MLP
    single-stream blocks: AdaLN, one fused linear -> q, k, v, MLP input over [video ; text],
        attention || MLP, one fused output linear
    head: AdaLN (scale, shift), linear to patch pixels; un-patchify (channel-first in a patch)

Sequence parallelism: the video tokens are split over the TP ranks between blocks; the text is
short and replicated on every rank. Dual-stream blocks follow Megatron SP exactly (video
projections all-gather and reduce-scatter; text projections see the replicated text). Single-stream
blocks modulate their shard, all-gather the video tokens, run the fused layers on the replicated
[video ; text] sequence (each rank its own heads and MLP slice) and keep their shard of the result.
Context parallelism splits the video tokens over the CP ranks first (the TP ranks split each chunk
under SP); the attention of both block kinds runs Ulysses' all-to-all (``layers/attention.py``), the
text stays replicated. Text masks are prefix masks: a sample's valid tokens come first (as in the official code and
diffusers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core.tensor_parallel import gather_from_sequence_parallel_region, scatter_to_sequence_parallel_region
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from torch import nn
from torch.utils.checkpoint import checkpoint

from pose_mcore.config.hunyuan import HunyuanConfig
from pose_mcore.layers.attention import attention
from pose_mcore.layers.embeddings import MLPEmbedding, PatchEmbed3D, timestep_sinusoid, unpatchify
from pose_mcore.layers.modulation import AdaLNModulation, by_segment, gated_residual, modulate
from pose_mcore.layers.norms import FP32LayerNorm
from pose_mcore.layers.rotary import rope_3d
from pose_mcore.layers.specs import (
    fused_attention_mlp_spec,
    joint_attention_spec,
    mlp_spec,
    parallel_linears,
    resolve_transformer_impl,
)
from pose_mcore.models.output import TransformerOutput
from pose_mcore.parallel.context import context_chunk, merge_video, split_video, token_shards
from pose_mcore.parallel.sequence import (
    broadcast_to_tokens,
    mark_sequence_parallel,
    without_sequence_parallel,
)

_FREQ_DIM = 256  # sinusoidal width of the timestep and guidance embeddings
_REFINER_MLP_RATIO = 4


class RefinerBlock(nn.Module):
    """Text refiner block: masked self-attention and a SiLU MLP, each added with an AdaLN gate.
    Small and replicated on every TP rank (the text is)."""

    def __init__(self, hidden_size: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.linear_q, self.linear_k, self.linear_v, self.linear_proj = (nn.Linear(hidden_size, hidden_size)
                                                                          for _ in range(4))
        self.norm2 = nn.LayerNorm(hidden_size, eps=1e-6)
        self.mlp = MLPEmbedding(hidden_size, _REFINER_MLP_RATIO * hidden_size, hidden_size, "silu")
        self.gates = nn.Linear(hidden_size, 2 * hidden_size)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x [b, l, d]``, ``temb [b, d]``, ``mask [b, 1, l, l]`` (bool, True = attend)."""
        h = self.norm1(x)
        head_dim = h.shape[-1] // self.heads
        q, k, v = (lin(h).unflatten(-1, (self.heads, head_dim)).transpose(1, 2)
                   for lin in (self.linear_q, self.linear_k, self.linear_v))
        attn = self.linear_proj(attention(q, k, v, mask=mask).transpose(1, 2).flatten(-2))
        gate_attn, gate_mlp = self.gates(F.silu(temb)).unsqueeze(1).chunk(2, dim=-1)
        x = x + attn * gate_attn
        return x + self.mlp(self.norm2(x)) * gate_mlp


class TokenRefiner(nn.Module):
    """Refines the LLM text tokens, conditioned on the timestep and their masked mean."""

    def __init__(self, config: HunyuanConfig) -> None:
        super().__init__()
        d = config.hidden_size
        self.time_embedder = MLPEmbedding(_FREQ_DIM, d, d, "silu")
        self.pooled_embedder = MLPEmbedding(config.text_dim, d, d, "silu")
        self.proj_in = nn.Linear(config.text_dim, d)
        self.blocks = nn.ModuleList(RefinerBlock(d, config.num_attention_heads)
                                    for _ in range(config.num_refiner_layers))

    def forward(self, text: torch.Tensor, timestep: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``text [b, l, text_dim]``, ``mask [b, l]`` (bool) -> ``[b, l, d]``."""
        weights = mask.to(text.dtype).unsqueeze(-1)
        pooled = (text * weights).sum(dim=1) / weights.sum(dim=1)
        temb = self.time_embedder(timestep_sinusoid(timestep, _FREQ_DIM).to(text.dtype)) + self.pooled_embedder(pooled)
        pair = mask[:, None, None, :] & mask[:, None, :, None]
        pair[..., 0] = True  # every query sees at least the first token (as the reference does)
        x = self.proj_in(text)
        for block in self.blocks:
            x = block(x, temb, pair)
        return x


@dataclass
class HunyuanDualBlockSubmodules:
    attention: ModuleSpec
    mlp: ModuleSpec
    mlp_ctx: ModuleSpec
    modulation_linear: type


class HunyuanDualBlock(MegatronModule):
    """Dual-stream block: video and text keep separate weights and share one attention."""

    text_only = ("attention.linear_q_ctx", "attention.q_norm_ctx", "attention.linear_proj_ctx", "mlp_ctx")
    """Submodules that make only the text stream's output (text queries, its attention projection, its MLP):
    the block's video output does not depend on them."""

    def __init__(self, config: HunyuanConfig, submodules: HunyuanDualBlockSubmodules) -> None:
        super().__init__(config)
        d, eps = config.hidden_size, config.layernorm_epsilon
        self.modulation = AdaLNModulation(config, 6, submodules.modulation_linear)
        self.modulation_ctx = AdaLNModulation(config, 6, submodules.modulation_linear)
        self.norm = FP32LayerNorm(d, eps, elementwise_affine=False)
        self.attention = build_module(submodules.attention, config=config)
        self.mlp = build_module(submodules.mlp, config=config)
        self.mlp_ctx = build_module(submodules.mlp_ctx, config=without_sequence_parallel(config))

    def forward(self, x: torch.Tensor, context: torch.Tensor, temb: torch.Tensor, first_temb: torch.Tensor | None,
                n_first: int, rotary: tuple[torch.Tensor, torch.Tensor], key_length: int,
                context_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sp = self.config.sequence_parallel
        mods = to_tokens(self.modulation(temb), sp)
        first = to_tokens(self.modulation(first_temb), sp) if first_temb is not None else None
        shift, scale, gate, shift_ff, scale_ff, gate_ff = self.modulation_ctx(temb)
        modulated = by_segment(lambda t, sh, sc: modulate(self.norm, t, sh, sc), n_first, (x,), mods[:2],
                               first and first[:2])
        attn, attn_ctx = self.attention(modulated, modulate(self.norm, context, shift, scale), rotary, key_length,
                                        context_mask)
        x = by_segment(gated_residual, n_first, (x, attn), mods[2:3], first and first[2:3])
        context = gated_residual(context, attn_ctx, gate)
        modulated = by_segment(lambda t, sh, sc: modulate(self.norm, t, sh, sc), n_first, (x,), mods[3:5],
                               first and first[3:5])
        x = by_segment(gated_residual, n_first, (x, self.mlp(modulated)), mods[5:], first and first[5:])
        context = gated_residual(context, self.mlp_ctx(modulate(self.norm, context, shift_ff, scale_ff)), gate_ff)
        return x, context


@dataclass
class HunyuanSingleBlockSubmodules:
    attention_mlp: ModuleSpec
    modulation_linear: type


class HunyuanSingleBlock(MegatronModule):
    """Single-stream block over [video ; text] with fused linears (see ``FusedAttentionMLP``)."""

    def __init__(self, config: HunyuanConfig, submodules: HunyuanSingleBlockSubmodules) -> None:
        super().__init__(config)
        self.modulation = AdaLNModulation(config, 3, submodules.modulation_linear)
        self.norm = FP32LayerNorm(config.hidden_size, config.layernorm_epsilon, elementwise_affine=False)
        self.attention_mlp = build_module(submodules.attention_mlp, config=config)

    def forward(self, x: torch.Tensor, context: torch.Tensor, temb: torch.Tensor, first_temb: torch.Tensor | None,
                n_first: int, rotary: tuple[torch.Tensor, torch.Tensor], key_length: int,
                context_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sp = self.config.sequence_parallel
        shift, scale, gate = self.modulation(temb)
        mods = to_tokens((shift, scale, gate), sp)
        first = to_tokens(self.modulation(first_temb), sp) if first_temb is not None else None
        video = by_segment(lambda t, sh, sc: modulate(self.norm, t, sh, sc), n_first, (x,), mods[:2],
                           first and first[:2])
        if sp:  # the fused layers run on the whole (replicated) sequence; their backward sums over ranks
            video = gather_from_sequence_parallel_region(video, tensor_parallel_output_grad=False)
        n_video = video.shape[0]
        out = self.attention_mlp(torch.cat([video, modulate(self.norm, context, shift, scale)]), n_video, rotary,
                                 key_length, context_mask)
        out_video, out_ctx = out[:n_video], out[n_video:]
        if sp:
            out_video = scatter_to_sequence_parallel_region(out_video)
        x = by_segment(gated_residual, n_first, (x, out_video), mods[2:], first and first[2:])
        return x, gated_residual(context, out_ctx, gate)


def to_tokens(mods: tuple[torch.Tensor, ...], sequence_parallel: bool) -> tuple[torch.Tensor, ...]:
    """Modulations about to act on this rank's video shard: their gradient is summed over TP ranks."""
    return tuple(broadcast_to_tokens(m) for m in mods) if sequence_parallel else mods


def hunyuan_block_specs(config: HunyuanConfig) -> tuple[ModuleSpec, ModuleSpec]:
    """(dual-stream, single-stream) block specs with local or transformer-engine linears."""
    impl = resolve_transformer_impl(config.transformer_impl)
    col, _ = parallel_linears(impl)
    dual = ModuleSpec(module=HunyuanDualBlock, submodules=HunyuanDualBlockSubmodules(
        attention=joint_attention_spec(impl), mlp=mlp_spec(impl), mlp_ctx=mlp_spec(impl), modulation_linear=col))
    single = ModuleSpec(module=HunyuanSingleBlock, submodules=HunyuanSingleBlockSubmodules(
        attention_mlp=fused_attention_mlp_spec(impl), modulation_linear=col))
    return dual, single


class HunyuanModel(MegatronModule):
    """HunyuanVideo DiT predicting the flow-matching velocity of a latent video."""

    output_layers = ("norm_out", "out_modulation", "proj_out")
    """What the last block's output goes through (nothing else does)."""

    def __init__(self, config: HunyuanConfig, block_specs: tuple[ModuleSpec, ModuleSpec] | None = None) -> None:
        super().__init__(config)
        config.check_tensor_parallel_group()
        d = config.hidden_size
        dual, single = block_specs or hunyuan_block_specs(config)
        self.x_embedder = PatchEmbed3D(config.in_channels, d, config.patch_size)
        self.time_embedder = MLPEmbedding(_FREQ_DIM, d, d, "silu")
        self.pooled_embedder = MLPEmbedding(config.pooled_dim, d, d, "silu")
        self.guidance_embedder = MLPEmbedding(_FREQ_DIM, d, d, "silu") if config.guidance_embeds else None
        self.context_refiner = TokenRefiner(config)
        self.double_blocks = nn.ModuleList(build_module(dual, config=config) for _ in range(config.num_layers))
        self.single_blocks = nn.ModuleList(build_module(single, config=config)
                                           for _ in range(config.num_single_layers))
        self.norm_out = FP32LayerNorm(d, config.layernorm_epsilon, elementwise_affine=False)
        self.out_modulation = AdaLNModulation(config, 2, dual.submodules.modulation_linear)
        self.proj_out = nn.Linear(d, config.out_channels * math.prod(config.patch_size))
        mark_sequence_parallel(self.proj_out, config.sequence_parallel)

    def _embed_time(self, timestep: torch.Tensor, pooled: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        return self.time_embedder(timestep_sinusoid(timestep, _FREQ_DIM).to(dtype)) + pooled

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_attention_mask: torch.Tensor, pooled_projections: torch.Tensor,
                guidance: torch.Tensor | None = None, attention_kwargs: dict | None = None,
                return_dict: bool = True) -> TransformerOutput | tuple[torch.Tensor]:
        """Velocity for ``hidden_states [b, c, f, h, w]`` at ``timestep`` (``1000 * t``, ``[b]``) given LLM
        text tokens ``[b, l, text_dim]`` with their mask ``[b, l]``, the pooled CLIP vector ``[b, pooled_dim]``
        and, for guidance-distilled models, ``guidance`` (``1000 * scale``, ``[b]``)."""
        cfg = self.config
        b = hidden_states.shape[0]
        grid = self.x_embedder.grid(hidden_states.shape)
        n_tokens = math.prod(grid)
        x = self.x_embedder(hidden_states)
        rotary = rope_3d(cfg.rope_axes_dim, grid, cfg.rope_theta, device=x.device, dtype=torch.float32)
        pooled = self.pooled_embedder(pooled_projections)
        temb = self._embed_time(timestep, pooled, x.dtype)
        if self.guidance_embedder is not None:
            if guidance is None:
                raise ValueError("this model embeds the guidance scale: pass guidance ([batch], 1000 * scale)")
            temb = temb + self.guidance_embedder(timestep_sinusoid(guidance, _FREQ_DIM).to(x.dtype))
        first_temb = None
        n_first = 0
        if cfg.image_condition_type == "token_replace":  # the clean first frame is embedded at t = 0
            first_temb = self._embed_time(torch.zeros_like(timestep), pooled, x.dtype)
            n_first = grid[1] * grid[2]
        mask = encoder_attention_mask.bool()
        context = self.context_refiner(encoder_hidden_states, timestep, mask).transpose(0, 1)
        # Valid text tokens are a prefix of each sample (diffusers and the official code assume the same).
        context_mask = torch.arange(mask.shape[1], device=mask.device)[None, :] < mask.sum(dim=1, keepdim=True)

        sp = cfg.sequence_parallel  # this rank's token shard (all tokens without SP and CP)
        x = split_video(x, sp)
        rotary = tuple(context_chunk(r, sp) for r in rotary)
        start = token_shards(sp)[0] * x.shape[0]
        n_first = min(max(n_first - start, 0), x.shape[0])

        args = (temb, first_temb, n_first, rotary, n_tokens, context_mask)
        for i, block in enumerate([*self.double_blocks, *self.single_blocks]):
            if cfg.recompute_block(i):
                x, context = checkpoint(block, x, context, *args, use_reentrant=False)
            else:
                x, context = block(x, context, *args)

        scale, shift = to_tokens(self.out_modulation(temb), cfg.sequence_parallel)
        x = self.proj_out(modulate(self.norm_out, x, shift, scale))
        x = merge_video(x, n_tokens, sp)
        out = unpatchify(x, b, grid, cfg.patch_size, cfg.out_channels, channels_first=True)
        return TransformerOutput(sample=out) if return_dict else (out,)
