"""The HunyuanVideo-1.5 DiT (T2V, I2V, mean-flow) on megatron-core tensor- and sequence-parallel layers.

Reads top to bottom: embeddings, context, blocks, head. ``HunyuanVideo15Model.forward`` takes and
returns what diffusers' ``HunyuanVideo15Transformer3DModel`` does, so it can stand in for it.

Data path (``s`` video tokens, ``l`` context tokens, ``b`` batch, ``d`` hidden; sequence-first):

    [latents ; condition latents ; condition mask] [b, 2c + 1, f, h, w] -> 3-D patches -> tokens [s, b, d]
    timestep (, timestep_r for mean-flow models) -> temb [b, d]
    context, three sources joined (layers/context_sources.py), each with its source embedding:
        SigLIP image tokens -> LayerNorm MLP (I2V; left out when every image token is zero, as T2V passes)
        ByT5 glyph tokens -> LayerNorm, three-linear GELU projection
        LLM (Qwen2.5-VL) text tokens -> token refiner (the HunyuanVideo one, conditioned on the timestep)
    dual-stream blocks (models/hunyuan.py's): per-stream AdaLN, one attention over [video ; context]
        (rotary on video only, masked context keys), per-stream MLP
    head: AdaLN (scale, shift), linear to patch pixels; un-patchify (channel-first in a patch)

Parallelism is HunyuanVideo's: the context is short and replicated on every TP and CP rank; under
sequence parallelism the TP ranks split the video tokens between blocks, under context parallelism
the CP ranks split them first and the attention runs Ulysses' all-to-all.
"""

from __future__ import annotations

import math

import torch
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.spec_utils import ModuleSpec, build_module
from torch import nn
from torch.utils.checkpoint import checkpoint

from pose_mcore.config.hunyuan15 import HunyuanVideo15Config
from pose_mcore.layers.context_sources import ContextSources
from pose_mcore.layers.embeddings import (
    GlyphEmbedding,
    ImageEmbedding,
    MLPEmbedding,
    PatchEmbed3D,
    timestep_sinusoid,
    unpatchify,
)
from pose_mcore.layers.modulation import AdaLNModulation, modulate
from pose_mcore.layers.norms import FP32LayerNorm
from pose_mcore.layers.rotary import rope_3d
from pose_mcore.models.hunyuan import TokenRefiner, hunyuan_block_specs, to_tokens
from pose_mcore.models.output import TransformerOutput
from pose_mcore.parallel.context import context_chunk, merge_video, split_video
from pose_mcore.parallel.sequence import mark_sequence_parallel

_FREQ_DIM = 256  # sinusoidal width of the timestep embeddings
TEXT, GLYPH, IMAGE = 0, 1, 2
"""Context sources, as the official code and diffusers number them."""


class HunyuanVideo15Model(MegatronModule):
    """HunyuanVideo-1.5 DiT predicting the flow-matching velocity of a latent video."""

    output_layers = ("norm_out", "out_modulation", "proj_out")
    """What the last block's output goes through (nothing else does)."""

    def __init__(self, config: HunyuanVideo15Config, block_spec: ModuleSpec | None = None) -> None:
        super().__init__(config)
        config.check_tensor_parallel_group()
        d = config.hidden_size
        block = block_spec or hunyuan_block_specs(config)[0]
        self.x_embedder = PatchEmbed3D(config.in_channels, d, config.patch_size)
        self.time_embedder = MLPEmbedding(_FREQ_DIM, d, d, "silu")
        self.time_r_embedder = MLPEmbedding(_FREQ_DIM, d, d, "silu") if config.use_meanflow else None
        self.context_refiner = TokenRefiner(config)
        self.glyph_embedder = GlyphEmbedding(config.glyph_dim, config.glyph_hidden_dim, d)
        self.image_embedder = ImageEmbedding(config.image_dim, d)
        self.context_sources = ContextSources(3, d)
        self.double_blocks = nn.ModuleList(build_module(block, config=config) for _ in range(config.num_layers))
        self.norm_out = FP32LayerNorm(d, config.layernorm_epsilon, elementwise_affine=False)
        self.out_modulation = AdaLNModulation(config, 2, block.submodules.modulation_linear)
        self.proj_out = nn.Linear(d, config.out_channels * math.prod(config.patch_size))
        mark_sequence_parallel(self.proj_out, config.sequence_parallel)

    def unread_parameters(self) -> list[nn.Parameter]:
        """What a T2V model never reads: its image projection (its pipeline's image tokens are zeros, left out)."""
        return list(self.image_embedder.parameters()) if self.config.task_type == "t2v" else []

    def _embed_time(self, timestep: torch.Tensor, timestep_r: torch.Tensor | None, dtype: torch.dtype
                    ) -> torch.Tensor:
        temb = self.time_embedder(timestep_sinusoid(timestep, _FREQ_DIM).to(dtype))
        if timestep_r is None:
            return temb
        if self.time_r_embedder is None:
            raise ValueError("timestep_r is given but this model has no mean-flow embedding (use_meanflow=False)")
        return temb + self.time_r_embedder(timestep_sinusoid(timestep_r, _FREQ_DIM).to(dtype))

    def _context(self, timestep: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor, glyph: torch.Tensor,
                 glyph_mask: torch.Tensor, image: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The joined context ``[l, b, d]`` and its key mask ``[b, l]``. Image tokens join when any is non-zero:
        diffusers masks every one of them when the whole batch's are zero (its T2V input), which leaves the
        valid tokens' outputs as without them."""
        streams = []
        if image is not None and bool(image.ne(0).any()):
            streams.append((IMAGE, self.image_embedder(image), text_mask.new_ones(image.shape[:2])))
        streams.append((GLYPH, self.glyph_embedder(glyph), glyph_mask))
        streams.append((TEXT, self.context_refiner(text, timestep, text_mask.bool()), text_mask))
        return self.context_sources(streams)

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                encoder_attention_mask: torch.Tensor, timestep_r: torch.Tensor | None = None,
                encoder_hidden_states_2: torch.Tensor | None = None,
                encoder_attention_mask_2: torch.Tensor | None = None, image_embeds: torch.Tensor | None = None,
                attention_kwargs: dict | None = None, return_dict: bool = True
                ) -> TransformerOutput | tuple[torch.Tensor]:
        """Velocity for ``hidden_states [b, 2c + 1, f, h, w]`` (latents, condition latents, condition mask) at
        ``timestep`` (``1000 * t``, ``[b]``; mean-flow models also ``timestep_r``) given LLM text tokens
        ``[b, l, text_dim]`` with their mask ``[b, l]``, glyph tokens ``[b, l2, glyph_dim]`` with their mask and,
        for I2V, SigLIP image tokens ``[b, n, image_dim]`` (all zero or None: none)."""
        cfg = self.config
        if encoder_hidden_states_2 is None or encoder_attention_mask_2 is None:
            raise ValueError("HunyuanVideo-1.5 reads the glyph (ByT5) stream: pass encoder_hidden_states_2 "
                             "[batch, tokens, glyph_dim] and encoder_attention_mask_2 [batch, tokens] (all zero: none)")
        b = hidden_states.shape[0]
        grid = self.x_embedder.grid(hidden_states.shape)
        n_tokens = math.prod(grid)
        x = self.x_embedder(hidden_states)
        rotary = rope_3d(cfg.rope_axes_dim, grid, cfg.rope_theta, device=x.device, dtype=torch.float32)
        temb = self._embed_time(timestep, timestep_r, x.dtype)
        context, context_mask = self._context(timestep, encoder_hidden_states, encoder_attention_mask,
                                              encoder_hidden_states_2, encoder_attention_mask_2, image_embeds)

        sp = cfg.sequence_parallel  # this rank's token shard (all tokens without SP and CP)
        x = split_video(x, sp)
        rotary = tuple(context_chunk(r, sp) for r in rotary)
        args = (temb, None, 0, rotary, n_tokens, context_mask)
        for i, block in enumerate(self.double_blocks):
            if cfg.recompute_block(i):
                x, context = checkpoint(block, x, context, *args, use_reentrant=False)
            else:
                x, context = block(x, context, *args)

        scale, shift = to_tokens(self.out_modulation(temb), sp)
        x = self.proj_out(modulate(self.norm_out, x, shift, scale))
        x = merge_video(x, n_tokens, sp)
        out = unpatchify(x, b, grid, cfg.patch_size, cfg.out_channels, channels_first=True)
        return TransformerOutput(sample=out) if return_dict else (out,)
