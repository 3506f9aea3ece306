"""The Wan2.1 / Wan2.2 video DiT on megatron-core tensor- and sequence-parallel layers.

Reads top to bottom: the block, its spec, then the model. ``WanModel.forward`` takes and returns
what diffusers' ``WanTransformer3DModel.forward`` does, so it can stand in for it.

Data path (``s`` video tokens, ``b`` batch, ``d`` hidden; sequence-first as in megatron-core):

    video [b, c, f, h, w] -> 3-D patches -> tokens [s, b, d]
    timestep -> sinusoid -> MLP -> temb -> projection -> 6-way modulation per block
    text [b, l, text_dim] -> MLP -> context [l, b, d];  CLIP image tokens -> MLP -> [m, b, d]
    (sequence / context parallel: pad s to a multiple of cp x tp and keep this rank's shard)
    blocks: modulated self-attention (q/k RMSNorm across heads, 3-D rotary), cross-attention to
            text (+ image), modulated tanh-GELU MLP; each added back with its gate
    head: modulated LayerNorm, linear to patch pixels (on the shard); gather, strip padding,
    un-patchify -> velocity [b, out_channels, f, h, w]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from torch import nn
from torch.utils.checkpoint import checkpoint

from pose_mcore.config.wan import WanConfig
from pose_mcore.layers.embeddings import ImageEmbedding, MLPEmbedding, PatchEmbed3D, timestep_sinusoid, unpatchify
from pose_mcore.layers.modulation import gated_residual, modulate, modulation_chunks
from pose_mcore.layers.norms import FP32LayerNorm
from pose_mcore.layers.rotary import rope_3d
from pose_mcore.layers.specs import (
    cross_attention_spec,
    mlp_spec,
    resolve_transformer_impl,
    self_attention_spec,
)
from pose_mcore.models.output import TransformerOutput
from pose_mcore.parallel.context import context_chunk, merge_video, split_video
from pose_mcore.parallel.sequence import broadcast_to_tokens, mark_sequence_parallel


@dataclass
class WanBlockSubmodules:
    self_attention: ModuleSpec
    cross_attention: ModuleSpec
    mlp: ModuleSpec


class WanBlock(MegatronModule):
    """One Wan block: modulated self-attention, cross-attention, modulated MLP."""

    def __init__(self, config: WanConfig, submodules: WanBlockSubmodules) -> None:
        super().__init__(config)
        d, eps = config.hidden_size, config.layernorm_epsilon
        self.norm1 = FP32LayerNorm(d, eps, elementwise_affine=False)
        self.self_attention = build_module(submodules.self_attention, config=config)
        self.norm2 = FP32LayerNorm(d, eps, elementwise_affine=True) if config.cross_attn_norm else nn.Identity()
        self.cross_attention = build_module(submodules.cross_attention, config=config)
        self.norm3 = FP32LayerNorm(d, eps, elementwise_affine=False)
        self.mlp = build_module(submodules.mlp, config=config)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 6, d) / d**0.5)
        # Replicated parameters applied to this rank's tokens only: their gradients are summed over TP.
        mark_sequence_parallel(self.norm2, config.sequence_parallel)
        self.scale_shift_table.sequence_parallel = config.sequence_parallel

    def forward(self, x: torch.Tensor, context: torch.Tensor, image_context: torch.Tensor | None,
                mod: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor], key_length: int) -> torch.Tensor:
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = modulation_chunks(self.scale_shift_table, mod)
        x = gated_residual(x, self.self_attention(modulate(self.norm1, x, shift_sa, scale_sa), rotary, key_length),
                           gate_sa)
        x = x + self.cross_attention(self.norm2(x.float()).type_as(x), context, image_context)
        return gated_residual(x, self.mlp(modulate(self.norm3, x, shift_ff, scale_ff)), gate_ff)


def wan_block_spec(config: WanConfig) -> ModuleSpec:
    """The Wan block with local (megatron-core) or transformer-engine linear layers."""
    impl = resolve_transformer_impl(config.transformer_impl)
    return ModuleSpec(module=WanBlock, submodules=WanBlockSubmodules(
        self_attention=self_attention_spec(impl),
        cross_attention=cross_attention_spec(impl, image_context=config.image_dim is not None),
        mlp=mlp_spec(impl)))


class WanModel(MegatronModule):
    """Wan DiT predicting the flow-matching velocity of a latent video."""

    output_layers = ("norm_out", "proj_out", "scale_shift_table")
    """What the last block's output goes through (nothing else does)."""

    def __init__(self, config: WanConfig, block_spec: ModuleSpec | None = None) -> None:
        super().__init__(config)
        config.check_tensor_parallel_group()
        d = config.hidden_size
        self.patch_embedding = PatchEmbed3D(config.in_channels, d, config.patch_size)
        self.time_embedder = MLPEmbedding(config.freq_dim, d, d, "silu")
        self.time_proj = nn.Linear(d, 6 * d)
        self.text_embedder = MLPEmbedding(config.text_dim, d, d, "gelu_tanh")
        self.image_embedder = ImageEmbedding(config.image_dim, d) if config.image_dim is not None else None
        spec = block_spec or wan_block_spec(config)
        self.blocks = nn.ModuleList([build_module(spec, config=config) for _ in range(config.num_layers)])
        self.norm_out = FP32LayerNorm(d, config.layernorm_epsilon, elementwise_affine=False)
        self.proj_out = nn.Linear(d, config.out_channels * math.prod(config.patch_size))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, d) / d**0.5)
        mark_sequence_parallel(self.proj_out, config.sequence_parallel)
        self.scale_shift_table.sequence_parallel = config.sequence_parallel

    def _timestep_modulation(self, timestep: torch.Tensor, n_tokens: int, dtype: torch.dtype):
        """Block modulation ``[s|1, b, 6, d]`` and head embedding ``[s|1, b, 1, d]`` from timesteps
        ``[b]`` (one per sample) or ``[b, s]`` (one per token, Wan2.2 TI2V)."""
        if timestep.dim() == 2 and timestep.shape[1] != n_tokens:
            raise ValueError(f"per-token timestep has shape {tuple(timestep.shape)}; expected [batch, {n_tokens}]")
        freq = timestep_sinusoid(timestep, self.config.freq_dim)
        temb = self.time_embedder(freq.to(self.time_embedder.linear_1.weight.dtype)).to(dtype)
        mod = self.time_proj(F.silu(temb)).unflatten(-1, (6, -1))
        if timestep.dim() == 1:
            return mod.unsqueeze(0), temb[None, :, None, :]
        return mod.transpose(0, 1), temb.transpose(0, 1).unsqueeze(2)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_hidden_states_image: torch.Tensor | None = None, return_dict: bool = True,
                attention_kwargs: dict | None = None) -> TransformerOutput | tuple[torch.Tensor]:
        """Velocity for ``hidden_states [b, c, f, h, w]`` at ``timestep`` (``1000 * t``, ``[b]`` or
        ``[b, tokens]``) given text embeddings ``[b, l, text_dim]`` (and CLIP image tokens)."""
        cfg = self.config
        b = hidden_states.shape[0]
        grid = self.patch_embedding.grid(hidden_states.shape)
        n_tokens = math.prod(grid)
        x = self.patch_embedding(hidden_states)
        rotary = rope_3d(cfg.rope_axes_dim, grid, cfg.rope_theta, device=x.device)
        mod, head_emb = self._timestep_modulation(timestep, n_tokens, x.dtype)
        # [L, b, d], made contiguous once: every block's key and value linears read it
        context = self.text_embedder(encoder_hidden_states).transpose(0, 1).contiguous()
        image_context = None
        if self.image_embedder is not None and encoder_hidden_states_image is not None:
            image_context = self.image_embedder(encoder_hidden_states_image).transpose(0, 1).contiguous()

        sp = cfg.sequence_parallel  # this rank's token shard (all tokens without SP and CP)
        x = split_video(x, sp)
        rotary = tuple(context_chunk(r, sp) for r in rotary)
        if mod.shape[0] > 1:  # per-token modulation: split like the tokens
            mod, head_emb = split_video(mod, sp), split_video(head_emb, sp)
        elif sp:
            mod, head_emb = broadcast_to_tokens(mod), broadcast_to_tokens(head_emb)

        for i, block in enumerate(self.blocks):
            args = (x, context, image_context, mod, rotary, n_tokens)
            if cfg.recompute_block(i):
                x = checkpoint(block, *args, use_reentrant=False)
            else:
                x = block(*args)

        shift, scale = modulation_chunks(self.scale_shift_table, head_emb)
        x = self.proj_out(modulate(self.norm_out, x, shift, scale))
        x = merge_video(x, n_tokens, sp)
        out = unpatchify(x, b, grid, cfg.patch_size, cfg.out_channels, channels_first=False)
        return TransformerOutput(sample=out) if return_dict else (out,)
