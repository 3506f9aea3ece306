"""Context parallelism for the video tokens, Ulysses-style, over megatron-core's context-parallel group.

Each CP rank holds a contiguous chunk of the (padded) video token sequence through the whole model;
under sequence parallelism the TP ranks split that chunk further, so the tokens of a sample are
split over ``cp x tp`` shards, shard ``cp_rank * tp + tp_rank`` (megatron-core's TP-CP group order).
Self-attention is the only layer that needs every token: its q, k, v go through an all-to-all from
"my tokens, all my heads" to "every token, 1/cp of my heads", and the output back. Text and image
context is short and replicated on every CP rank; where it joins the attention (HunyuanVideo) each
rank takes its heads of it, and the text outputs are gathered over the heads again.

Gradients: DDP averages over the data- *and* context-parallel ranks (``dp_cp_group``), so what a CP
rank holds of any gradient is a *share*: the mean of the shares over the CP ranks is the gradient. A
replicated tensor whose gradient every rank computes whole (the loss side) holds it as its share; a
token-sharded activation holds ``cp x`` the gradient of its tokens (and the other ranks nothing for
them). Leaving the token-parallel region (:func:`gather_shards`: the model's output, the head's merge)
sums the shares over the CP ranks and keeps this rank's slice, which is ``cp x`` its part; entering it
(:func:`scatter_to_context`) returns that for this rank's chunk and zeros elsewhere, a share again. So
one model's input gradient may flow into another's output (the generator trained through the
discriminator), and replicated work on the context (text refiner, embeddings) needs nothing special.
The loss is not rescaled (megatron-core multiplies it by ``cp`` because its loss is token-sharded).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from pose_mcore.parallel.sequence import gather_tokens, pad_sequence, scatter_tokens, summed_over


def cp_size() -> int:
    return parallel_state.get_context_parallel_world_size()


def cp_rank() -> int:
    return parallel_state.get_context_parallel_rank()


def _tp_split(sequence_parallel: bool) -> int:
    """How many TP ranks split a CP rank's tokens (only under sequence parallelism)."""
    return parallel_state.get_tensor_model_parallel_world_size() if sequence_parallel else 1


def token_shards(sequence_parallel: bool) -> tuple[int, int]:
    """(index of this rank's token shard, number of shards) of the video tokens between blocks."""
    tp = _tp_split(sequence_parallel)
    tp_rank = parallel_state.get_tensor_model_parallel_rank() if sequence_parallel else 0
    return cp_rank() * tp + tp_rank, cp_size() * tp


def token_shard_group(sequence_parallel: bool) -> dist.ProcessGroup | None:
    """The group over which the video tokens are split between blocks (None: not split)."""
    tp = _tp_split(sequence_parallel)
    if cp_size() > 1 and tp > 1:
        return parallel_state.get_tensor_and_context_parallel_group()
    if cp_size() > 1:
        return parallel_state.get_context_parallel_group()
    if tp > 1:
        return parallel_state.get_tensor_model_parallel_group()
    return None


class _ScatterToContext(torch.autograd.Function):
    """This CP rank's chunk of a replicated sequence; backward: its gradient in place, zeros elsewhere."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.full = x.shape[0]
        chunk = x.shape[0] // cp_size()
        ctx.start = cp_rank() * chunk
        return x.narrow(0, ctx.start, chunk).clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        out = grad.new_zeros((ctx.full, *grad.shape[1:]))
        out.narrow(0, ctx.start, grad.shape[0]).copy_(grad)
        return out


class _GatherShards(torch.autograd.Function):
    """All-gather along dim 0 over ``group`` (token shards of the TP and / or CP ranks) into a replicated
    tensor; backward: this rank's slice of the gradient summed over the CP ranks (the TP ranks hold equal
    gradients of a replicated tensor, the CP ranks shares of it, see the module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.rank, ctx.n = dist.get_rank(group), x.shape[0]
        pieces = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
        dist.all_gather(pieces, x.contiguous(), group=group)
        return torch.cat(pieces)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        if cp_size() > 1:
            grad = summed_over(grad, parallel_state.get_context_parallel_group())
        return grad.narrow(0, ctx.rank * ctx.n, ctx.n).contiguous(), None


def scatter_to_context(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad the replicated sequence ``x [s, ...]`` to a multiple of ``cp x multiple`` and keep this CP rank's
    chunk (identity without CP, apart from the padding)."""
    x = pad_sequence(x, cp_size() * multiple)
    return _ScatterToContext.apply(x) if cp_size() > 1 else x


def gather_shards(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Concatenate the shards of ``group`` along dim 0 into a replicated tensor (see :class:`_GatherShards`).
    Identity for ``group=None``."""
    if group is None:
        return x
    return _GatherShards.apply(x, group)


def gather_from_context(x: torch.Tensor, length: int) -> torch.Tensor:
    """The whole sequence from this CP rank's chunk, padding beyond ``length`` stripped."""
    if cp_size() == 1:
        return x[:length]
    return gather_shards(x, parallel_state.get_context_parallel_group())[:length]


def split_video(x: torch.Tensor, sequence_parallel: bool) -> torch.Tensor:
    """This rank's shard of the replicated video tokens ``x [s, ...]`` (padded to ``cp x tp`` equal shards;
    ``tp`` only under sequence parallelism). Identity when neither splits them."""
    x = scatter_to_context(x, _tp_split(sequence_parallel))
    return scatter_tokens(x) if sequence_parallel else x


def merge_video(x: torch.Tensor, length: int, sequence_parallel: bool) -> torch.Tensor:
    """The whole video sequence (padding beyond ``length`` stripped) from this rank's shard: the inverse of
    :func:`split_video`, for the model's output."""
    if sequence_parallel:
        x = gather_tokens(x, x.shape[0] * _tp_split(sequence_parallel))
    return gather_from_context(x, length)


def context_chunk(table: torch.Tensor, sequence_parallel: bool) -> torch.Tensor:
    """This CP rank's rows of a per-token table that needs no gradient (rotary cos / sin), padded like the
    tokens: the rows of the tokens a CP rank's attention sees once its TP ranks have gathered them."""
    table = pad_sequence(table, cp_size() * _tp_split(sequence_parallel))
    chunk = table.shape[0] // cp_size()
    return table.narrow(0, cp_rank() * chunk, chunk)


def _all_to_all(x: torch.Tensor) -> torch.Tensor:
    """``x [cp, ...]``: row ``j`` goes to CP rank ``j``; returns ``[cp, ...]`` with row ``r`` from rank ``r``."""
    x = x.contiguous()
    out = torch.empty_like(x)
    dist.all_to_all_single(out, x, group=parallel_state.get_context_parallel_group())
    return out


class _AllToAll(torch.autograd.Function):
    """Ulysses' all-to-all: ``to_heads`` turns ``[s, b, n, d]`` (my tokens, my heads) into
    ``[cp * s, b, n / cp, d]`` (every token, 1/cp of my heads), else the inverse; backward the other way."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, to_heads: bool) -> torch.Tensor:
        ctx.to_heads = to_heads
        return _seq_to_heads(x) if to_heads else _heads_to_seq(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return (_heads_to_seq(grad) if ctx.to_heads else _seq_to_heads(grad)), None


def _seq_to_heads(x: torch.Tensor) -> torch.Tensor:
    cp = cp_size()
    s, b, n, d = x.shape
    out = _all_to_all(x.view(s, b, cp, n // cp, d).permute(2, 0, 1, 3, 4))
    return out.reshape(cp * s, b, n // cp, d)


def _heads_to_seq(x: torch.Tensor) -> torch.Tensor:
    cp = cp_size()
    s_all, b, m, d = x.shape
    out = _all_to_all(x.view(cp, s_all // cp, b, m, d))
    return out.permute(1, 2, 0, 3, 4).reshape(s_all // cp, b, cp * m, d)


def seq_to_heads(x: torch.Tensor) -> torch.Tensor:
    """Ulysses' first all-to-all: ``[s, b, n, d]`` of this rank's tokens -> every token, heads
    ``cp_rank * n/cp ...`` of its ``n``."""
    return _AllToAll.apply(x, True) if cp_size() > 1 else x


def heads_to_seq(x: torch.Tensor) -> torch.Tensor:
    """Ulysses' second all-to-all: every token, 1/cp of the heads -> this rank's tokens, all its heads."""
    return _AllToAll.apply(x, False) if cp_size() > 1 else x


def local_heads(x: torch.Tensor) -> torch.Tensor:
    """This CP rank's heads of a replicated ``[l, b, n, d]`` (the text in a joint attention)."""
    if cp_size() == 1:
        return x
    m = x.shape[2] // cp_size()
    return x.narrow(2, cp_rank() * m, m)


class _GatherHeads(torch.autograd.Function):
    """``[l, b, n / cp, d]`` of each CP rank -> ``[l, b, n, d]``; backward: each rank's heads of the gradient
    summed over the CP ranks (every rank used the gathered tensor)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        group = parallel_state.get_context_parallel_group()
        pieces = [torch.empty_like(x) for _ in range(cp_size())]
        dist.all_gather(pieces, x.contiguous(), group=group)
        ctx.m = x.shape[2]
        return torch.cat(pieces, dim=2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = summed_over(grad, parallel_state.get_context_parallel_group())
        return grad.narrow(2, cp_rank() * ctx.m, ctx.m).contiguous()


def gather_heads(x: torch.Tensor) -> torch.Tensor:
    """Gather the heads of a replicated sequence (the text outputs of a joint attention) over the CP ranks."""
    return _GatherHeads.apply(x) if cp_size() > 1 else x
