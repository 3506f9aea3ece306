"""Discriminator heads on the multi-layer features of the (EMA) backbone.

``SemanticHead`` (paper Sec. 3.3, Fig. 4): learnable logit queries; per feature layer, the queries
self-attend with the condition tokens (text, and image for I2V, each with a learned modality
embedding; a masked text's padding is not attended, as the DiT does not attend it), get the noise
level through an AdaLN scale/shift, and cross-attend to that layer's video tokens with
:func:`pose_kernels.logit_query_attention` (few queries, very long keys). Under sequence
parallelism each rank attends to its own token shard and the partial results are merged exactly by
log-sum-exp (over the TP ranks under sequence parallelism, over the CP ranks under context parallelism,
over both with both). The outputs of all layers are concatenated along channels and projected to one logit.

``ConvHead``: the convolutional head of the paper's ablation (Table 3).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from megatron.core import parallel_state
from pose_kernels import logit_query_attention, merge_partial_attention
from torch import nn

from pose_mcore.layers.embeddings import MLPEmbedding, timestep_sinusoid
from pose_mcore.models.features import Features
from pose_mcore.parallel.context import gather_shards, merge_video, token_shard_group
from pose_mcore.parallel.sequence import broadcast_to_tokens, mark_sequence_parallel


class _QueryLayer(nn.Module):
    """One feature layer's query path: self-attention with the conditions, AdaLN, cross-attention."""

    def __init__(self, dim: int, feature_dim: int, heads: int, sequence_parallel: bool) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ada = nn.Linear(dim, 2 * dim)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(feature_dim, 2 * dim)
        self.out = nn.Linear(dim, dim)
        mark_sequence_parallel(self.kv, sequence_parallel)  # applied to this rank's token shard

    def forward(self, queries: torch.Tensor, conditions: torch.Tensor, temb: torch.Tensor, video: torch.Tensor,
                valid: int, group: dist.ProcessGroup | None, ignored: torch.Tensor | None = None) -> torch.Tensor:
        """``group``: the ranks the video tokens are split over (None: this rank has all of them); ``ignored``
        ``[b, n + conditions]`` (bool): tokens no query attends to (a masked text's padding). Only the queries'
        rows of the self-attention are kept, so only they are computed."""
        b, n, d = queries.shape
        tokens = self.norm(torch.cat([queries, conditions], dim=1))
        q = queries + self.self_attn(tokens[:, :n], tokens, tokens, key_padding_mask=ignored, need_weights=False)[0]
        scale, shift = self.ada(F.silu(temb)).unsqueeze(1).chunk(2, dim=-1)
        q = q * (1 + scale) + shift
        hd = d // self.heads
        qh = self.q(q).view(b, n, self.heads, hd).transpose(1, 2)
        if parallel_state.get_tensor_model_parallel_world_size() > 1 and self.kv.weight.sequence_parallel:
            qh = broadcast_to_tokens(qh)  # the replicated queries meet this rank's keys only: sum over TP
        # the features as the backbone lays them out ([s, b, d]): the gradient they get back is contiguous (a
        # transposed read handed the backbone transposed gradients, which its linears' backward copies)
        k, v = self.kv(video).view(video.shape[0], b, 2, self.heads, hd).permute(2, 1, 3, 0, 4)
        lengths = torch.full((b,), valid, dtype=torch.int32, device=video.device)
        out, lse = logit_query_attention(qh, k, v, key_lengths=lengths)
        if group is not None:
            stacked = gather_shards(torch.cat([out, lse.unsqueeze(-1)], -1).unsqueeze(0), group)
            out, lse = merge_partial_attention(list(stacked[..., :-1]), list(stacked[..., -1]))
        return q + self.out(out.transpose(1, 2).reshape(b, n, d))


class SemanticHead(nn.Module):
    """Logit-query head: conditions + noise level + cross-attention over each feature layer -> logit."""

    def __init__(self, feature_dim: int, num_layers: int, text_dim: int, image_dim: int | None = None,
                 dim: int = 64, num_queries: int = 8, heads: int = 4, sequence_parallel: bool = False) -> None:
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * dim**-0.5)
        self.text_proj = nn.Linear(text_dim, dim)
        self.m_text = nn.Parameter(torch.zeros(1, 1, dim))
        self.image_proj = nn.Linear(image_dim, dim) if image_dim else None
        self.m_image = nn.Parameter(torch.zeros(1, 1, dim)) if image_dim else None
        self.time = MLPEmbedding(dim, dim, dim, "silu")
        self.layers = nn.ModuleList(_QueryLayer(dim, feature_dim, heads, sequence_parallel) for _ in range(num_layers))
        self.proj = nn.Linear(num_layers * num_queries * dim, 1)

    def forward(self, features: Features, t: torch.Tensor, text: torch.Tensor, image: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[b]`` from features, noise level ``t [b]`` (in [0, 1]) and condition tokens; ``text_mask``
        ``[b, l]`` (HunyuanVideo's masked text): the text tokens to attend (None: all)."""
        conditions = self.text_proj(text) + self.m_text
        if self.image_proj is not None and image is not None:
            conditions = torch.cat([self.image_proj(image) + self.m_image, conditions], dim=1)
        b, n = text.shape[0], self.queries.shape[0]
        ignored = None  # the queries and image tokens are always attended, the text where its mask says
        if text_mask is not None:
            attended = text_mask.new_ones(b, n + conditions.shape[1] - text_mask.shape[1])
            ignored = torch.cat([attended, text_mask], dim=1).eq(0)
        temb = self.time(timestep_sinusoid(1000 * t, self.queries.shape[1]))
        queries = self.queries.unsqueeze(0).expand(b, -1, -1)
        valid, group = features.valid_tokens(), token_shard_group(features.sequence_parallel)
        outs = [layer(queries, conditions, temb, hidden.float(), valid, group, ignored)
                for layer, hidden in zip(self.layers, features.hidden, strict=True)]
        return self.proj(torch.cat(outs, dim=-1).flatten(1)).squeeze(-1)


class _ContiguousGrad(torch.autograd.Function):
    """Identity forward; backward, the gradient made contiguous once (for a tensor read through a permutation,
    whose producer's backward would otherwise copy it, or worse)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class ConvHead(nn.Module):
    """Convolutional head (ablation): per feature layer a 3-D conv over the token grid, pooled, summed."""

    def __init__(self, feature_dim: int, num_layers: int, dim: int = 64) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv3d(feature_dim, dim, 3, padding=1) for _ in range(num_layers))
        self.time = MLPEmbedding(dim, dim, dim, "silu")
        self.proj = nn.Linear(dim, 1)

    def forward(self, features: Features, t: torch.Tensor, text: torch.Tensor | None = None,
                image: torch.Tensor | None = None, text_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``[b]`` from the features and the noise level (the conditions are the semantic head's)."""
        f, h, w = features.grid
        total = f * h * w
        pooled = 0
        for conv, hidden in zip(self.convs, features.hidden, strict=True):
            if token_shard_group(features.sequence_parallel) is not None:  # this head needs every token
                hidden = merge_video(hidden, total, features.sequence_parallel)
            grid = _ContiguousGrad.apply(hidden.float()).permute(1, 2, 0).reshape(hidden.shape[1], -1, f, h, w)
            pooled = pooled + F.silu(conv(grid)).mean(dim=(2, 3, 4))
        temb = self.time(timestep_sinusoid(1000 * t, pooled.shape[-1]))
        return self.proj(pooled + temb).squeeze(-1)
