"""Logit-query cross-attention: few queries (the discriminator head's logit queries, 1..128) over
very long keys (a layer's video tokens, up to hundreds of thousands).

``logit_query_attention(q, k, v, key_lengths=None, scale=None) -> (out, lse)`` with ``q [B, H, N, D]``,
``k, v [B, H, S, D]`` and optional valid key counts ``key_lengths [B]``; ``out [B, H, N, D]`` (q's dtype)
and the log-sum-exp ``lse [B, H, N]`` (fp32; ``-inf`` where a sample has no valid key, whose ``out``
is 0). Both outputs are differentiable, so shard results merged with :func:`merge_partial_attention`
backpropagate exactly.

Triton (flash-decoding / split-K): the forward runs ``B * H * splits`` programs, each sweeping its
own key range with an online softmax and writing a partial ``(out, lse)``; the partials are merged by
log-sum-exp. The backward recomputes the probabilities from ``lse`` with the same split: each program
writes ``dk``, ``dv`` for its keys and a partial ``dq`` that is summed over splits (deterministic, no
atomics). The torch reference does the same computation chunk by chunk, so it never holds an
``N x S`` score matrix for the whole sequence either: it is the CPU path.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pose_kernels._dispatch import HAVE_TRITON, MAX_GRID, check_float, check_grid, interpreting, select_backend

MAX_QUERIES = 128
_BLOCK_S = 64
_REFERENCE_CHUNK = 4096

if HAVE_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _program_keys(len_ptr, bh, split, H, S, keys_per_split, HAS_LEN: tl.constexpr):
        """(batch, head, first key, end key) of the program for head row ``bh`` and key split ``split``."""
        b = bh // H
        length = S
        if HAS_LEN:
            length = tl.minimum(tl.load(len_ptr + b), S)
        start = split * keys_per_split
        return b, bh % H, start, tl.minimum(start + keys_per_split, length)

    @triton.jit
    def _fwd_kernel(q_ptr, k_ptr, v_ptr, len_ptr, o_ptr, lse_ptr,
                    sq_b, sq_h, sq_n, sq_d, sk_b, sk_h, sk_s, sk_d, sv_b, sv_h, sv_s, sv_d,
                    H, N, S, D, scale, keys_per_split, n_splits,
                    HAS_LEN: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
        bh = tl.program_id(0).to(tl.int64)  # offsets like bh * S * D pass 2**31 at batch 8
        split = tl.program_id(1)
        b, h, start, end = _program_keys(len_ptr, bh, split, H, S, keys_per_split, HAS_LEN)
        n = tl.arange(0, BLOCK_N)
        d = tl.arange(0, BLOCK_D)
        nd_mask = (n[:, None] < N) & (d[None, :] < D)
        q = tl.load(q_ptr + b * sq_b + h * sq_h + n[:, None] * sq_n + d[None, :] * sq_d, mask=nd_mask, other=0.0)
        m_i = tl.full([BLOCK_N], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_N], tl.float32)
        acc = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for s0 in range(start, end, BLOCK_S):
            s = s0 + tl.arange(0, BLOCK_S)
            sd_mask = (s[:, None] < end) & (d[None, :] < D)
            k = tl.load(k_ptr + b * sk_b + h * sk_h + s[:, None] * sk_s + d[None, :] * sk_d, mask=sd_mask, other=0.0)
            v = tl.load(v_ptr + b * sv_b + h * sv_h + s[:, None] * sv_s + d[None, :] * sv_d, mask=sd_mask, other=0.0)
            qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            qk = tl.where(s[None, :] < end, qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, axis=1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(qk - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
        has = l_i > 0
        out = acc / tl.where(has, l_i, 1.0)[:, None]
        lse = tl.where(has, m_i + tl.log(tl.where(has, l_i, 1.0)), float("-inf"))
        row = (bh * n_splits + split) * N
        tl.store(o_ptr + (row + n[:, None]) * D + d[None, :], out, mask=nd_mask)
        tl.store(lse_ptr + row + n, lse, mask=n < N)

    @triton.jit
    def _bwd_kernel(q_ptr, k_ptr, v_ptr, len_ptr, do_ptr, lse_ptr, delta_ptr, dq_ptr, dk_ptr, dv_ptr,
                    sq_b, sq_h, sq_n, sq_d, sk_b, sk_h, sk_s, sk_d, sv_b, sv_h, sv_s, sv_d,
                    H, N, S, D, scale, keys_per_split, n_splits,
                    HAS_LEN: tl.constexpr, PRECISION: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
        bh = tl.program_id(0).to(tl.int64)
        split = tl.program_id(1)
        b, h, start, end = _program_keys(len_ptr, bh, split, H, S, keys_per_split, HAS_LEN)
        n = tl.arange(0, BLOCK_N)
        d = tl.arange(0, BLOCK_D)
        n_mask = n < N
        nd_mask = n_mask[:, None] & (d[None, :] < D)
        q = tl.load(q_ptr + b * sq_b + h * sq_h + n[:, None] * sq_n + d[None, :] * sq_d, mask=nd_mask, other=0.0)
        do = tl.load(do_ptr + (bh * N + n[:, None]) * D + d[None, :], mask=nd_mask, other=0.0).to(q.dtype)
        lse = tl.load(lse_ptr + bh * N + n, mask=n_mask, other=0.0)
        delta = tl.load(delta_ptr + bh * N + n, mask=n_mask, other=0.0)
        dq = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
        for s0 in range(start, end, BLOCK_S):
            s = s0 + tl.arange(0, BLOCK_S)
            sd_mask = (s[:, None] < end) & (d[None, :] < D)
            k = tl.load(k_ptr + b * sk_b + h * sk_h + s[:, None] * sk_s + d[None, :] * sk_d, mask=sd_mask, other=0.0)
            v = tl.load(v_ptr + b * sv_b + h * sv_h + s[:, None] * sv_s + d[None, :] * sv_d, mask=sd_mask, other=0.0)
            qk = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
            p = tl.where(n_mask[:, None] & (s[None, :] < end), tl.exp(qk - lse[:, None]), 0.0)
            dv = tl.dot(tl.trans(p.to(do.dtype)), do, input_precision=PRECISION)
            dp = tl.dot(do, tl.trans(v), input_precision=PRECISION)
            ds = (p * (dp - delta[:, None]) * scale).to(q.dtype)
            dk = tl.dot(tl.trans(ds), q, input_precision=PRECISION)
            dq += tl.dot(ds, k, input_precision=PRECISION)
            kv_off = (bh * S + s[:, None]) * D + d[None, :]
            tl.store(dk_ptr + kv_off, dk, mask=sd_mask)
            tl.store(dv_ptr + kv_off, dv, mask=sd_mask)
        tl.store(dq_ptr + ((bh * n_splits + split) * N + n[:, None]) * D + d[None, :], dq, mask=nd_mask)


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_lengths: torch.Tensor | None) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"logit_query_attention: {name} must be 4-D [B, H, {'N' if name == 'q' else 'S'}, D]; "
                             f"got shape {tuple(t.shape)}")
        check_float(f"logit_query_attention: {name}", t)
    if k.shape != v.shape:
        raise ValueError(f"logit_query_attention: k {tuple(k.shape)} and v {tuple(v.shape)} must have the same shape")
    for dim, what in ((0, "batch"), (1, "heads"), (3, "head dim")):
        if q.shape[dim] != k.shape[dim]:
            raise ValueError(f"logit_query_attention: {what} differs: q {tuple(q.shape)} vs k {tuple(k.shape)}")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"logit_query_attention: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if q.shape[2] < 1 or k.shape[2] < 1:
        raise ValueError(f"logit_query_attention: need at least one query and one key; q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}")
    if key_lengths is not None:
        if key_lengths.shape != (q.shape[0],) or key_lengths.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"logit_query_attention: key_lengths must be an integer tensor [B] = [{q.shape[0]}]; "
                             f"got {key_lengths.dtype} with shape {tuple(key_lengths.shape)}")


def _key_mask(key_lengths: torch.Tensor | None, s0: int, s1: int, device: torch.device) -> torch.Tensor | None:
    if key_lengths is None:
        return None
    return (torch.arange(s0, s1, device=device)[None, :] < key_lengths.to(device)[:, None])[:, None, None, :]


def _reference_forward(q, k, v, key_lengths, scale):
    """Chunked over S with the LSE merge: fp32 ``(out, lse)``, never an ``N x S`` matrix for all of S."""
    qf, chunk = q.float(), _REFERENCE_CHUNK
    outs, lses = [], []
    for s0 in range(0, k.shape[2], chunk):
        s1 = min(s0 + chunk, k.shape[2])
        scores = qf @ k[:, :, s0:s1].float().transpose(-1, -2) * scale
        mask = _key_mask(key_lengths, s0, s1, q.device)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        lse = torch.logsumexp(scores, dim=-1)
        p = torch.exp(scores - torch.where(torch.isfinite(lse), lse, 0.0).unsqueeze(-1))
        outs.append(p @ v[:, :, s0:s1].float())
        lses.append(lse)
    return _merge(torch.stack(outs), torch.stack(lses))


def _reference_backward(q, k, v, key_lengths, scale, lse, grad_out, delta):
    qf, do, chunk = q.float(), grad_out.float(), _REFERENCE_CHUNK
    dq = torch.zeros_like(qf)
    dk = torch.zeros(k.shape, dtype=torch.float32, device=k.device)
    dv = torch.zeros_like(dk)
    safe_lse = torch.where(torch.isfinite(lse), lse, 0.0).unsqueeze(-1)
    for s0 in range(0, k.shape[2], chunk):
        s1 = min(s0 + chunk, k.shape[2])
        kc, vc = k[:, :, s0:s1].float(), v[:, :, s0:s1].float()
        p = torch.exp(qf @ kc.transpose(-1, -2) * scale - safe_lse)
        mask = _key_mask(key_lengths, s0, s1, q.device)
        if mask is not None:
            p = p.masked_fill(~mask, 0.0)
        p = torch.where(torch.isfinite(lse).unsqueeze(-1), p, 0.0)
        dv[:, :, s0:s1] = p.transpose(-1, -2) @ do
        ds = p * (do @ vc.transpose(-1, -2) - delta.unsqueeze(-1)) * scale
        dk[:, :, s0:s1] = ds.transpose(-1, -2) @ qf
        dq += ds @ kc
    return dq, dk, dv


def _splits(q: torch.Tensor, s: int) -> tuple[int, int]:
    """(number of splits, keys per split): enough programs to fill the device, whole blocks per split."""
    blocks = triton.cdiv(s, _BLOCK_S)
    if interpreting():
        target = 2
    else:
        sms = torch.cuda.get_device_properties(q.device).multi_processor_count
        target = triton.cdiv(4 * sms, q.shape[0] * q.shape[1])
    blocks_per_split = triton.cdiv(blocks, max(1, min(target, blocks, MAX_GRID[1])))
    keys = blocks_per_split * _BLOCK_S
    return triton.cdiv(s, keys), keys


def _launch_args(q, k, key_lengths):
    """Shapes, split, key lengths and compile-time constants shared by the forward and backward launches."""
    b, h, n, d = q.shape
    s = k.shape[2]
    n_splits, keys = _splits(q, s)
    lens = key_lengths.to(device=q.device, dtype=torch.int32) if key_lengths is not None else q.new_empty(0)
    meta = dict(HAS_LEN=key_lengths is not None, PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
                BLOCK_N=max(16, triton.next_power_of_2(n)), BLOCK_S=_BLOCK_S,
                BLOCK_D=max(16, triton.next_power_of_2(d)), num_warps=4 if n <= 64 else 8)
    return b, h, n, d, s, n_splits, keys, lens, meta


def _triton_forward(q, k, v, key_lengths, scale):
    b, h, n, d, s, n_splits, keys, lens, meta = _launch_args(q, k, key_lengths)
    o_part = torch.empty(b * h, n_splits, n, d, dtype=torch.float32, device=q.device)
    lse_part = torch.empty(b * h, n_splits, n, dtype=torch.float32, device=q.device)
    _fwd_kernel[check_grid((b * h, n_splits))](q, k, v, lens, o_part, lse_part, *q.stride(), *k.stride(), *v.stride(),
                                   h, n, s, d, scale, keys, n_splits, **meta)
    out, lse = _merge(o_part.transpose(0, 1), lse_part.transpose(0, 1))
    return out.view(b, h, n, d), lse.view(b, h, n)


def _triton_backward(q, k, v, key_lengths, scale, lse, grad_out, delta):
    b, h, n, d, s, n_splits, keys, lens, meta = _launch_args(q, k, key_lengths)
    dq_part = torch.empty(b * h, n_splits, n, d, dtype=torch.float32, device=q.device)
    dk = torch.zeros(b, h, s, d, dtype=torch.float32, device=q.device)
    dv = torch.zeros_like(dk)
    _bwd_kernel[check_grid((b * h, n_splits))](q, k, v, lens, grad_out.float().contiguous(), lse.contiguous(),
                                   delta.contiguous(), dq_part, dk, dv, *q.stride(), *k.stride(), *v.stride(),
                                   h, n, s, d, scale, keys, n_splits, **meta)
    return dq_part.sum(dim=1).view(b, h, n, d), dk, dv


class _LogitQueryAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_lengths, scale, backend):
        fwd = _reference_forward if backend == "reference" else _triton_forward
        out, lse = fwd(q, k, v, key_lengths, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.key_lengths, ctx.scale, ctx.backend = key_lengths, scale, backend
        return out.to(q.dtype), lse

    @staticmethod
    def backward(ctx, grad_out, grad_lse):
        q, k, v, out, lse = ctx.saved_tensors
        grad_out = torch.zeros_like(out) if grad_out is None else grad_out.float()
        # d lse / d scores = p, so a gradient on lse enters like a shift of delta.
        delta = (grad_out * out).sum(-1)
        if grad_lse is not None:
            delta = delta - torch.where(torch.isfinite(lse), grad_lse, 0.0)
        bwd = _reference_backward if ctx.backend == "reference" else _triton_backward
        dq, dk, dv = bwd(q, k, v, ctx.key_lengths, ctx.scale, lse, grad_out, delta)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), None, None, None


def logit_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_lengths: torch.Tensor | None = None,
                          scale: float | None = None, backend: str | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of few queries over long keys; returns ``(out, lse)``. See the module docstring."""
    _check(q, k, v, key_lengths)
    backend = select_backend(q, backend)
    if backend != "reference" and q.shape[2] > MAX_QUERIES:
        raise ValueError(f"logit_query_attention: the kernel takes at most {MAX_QUERIES} queries; "
                         f"q has shape {tuple(q.shape)}")
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return _LogitQueryAttention.apply(q, k, v, key_lengths, scale, backend)


def _merge(outs: torch.Tensor, lses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge partial results stacked on dim 0 (``outs [P, ..., D]``, ``lses [P, ...]``), differentiably."""
    lse = torch.logsumexp(lses, dim=0)
    weights = torch.exp(lses - torch.where(torch.isfinite(lse), lse, 0.0))
    return (weights.unsqueeze(-1) * outs.float()).sum(dim=0), lse


def merge_partial_attention(outs: Sequence[torch.Tensor], lses: Sequence[torch.Tensor]
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine attention results over disjoint key shards (e.g. the sequence-parallel ranks) into the
    exact result over all keys: ``lse = logsumexp_i lse_i``, ``out = sum_i exp(lse_i - lse) out_i``."""
    if len(outs) != len(lses) or not outs:
        raise ValueError(f"merge_partial_attention: need matching non-empty lists; got {len(outs)} outs, "
                         f"{len(lses)} lses")
    for i, (o, s) in enumerate(zip(outs, lses, strict=True)):
        if o.shape != outs[0].shape or s.shape != o.shape[:-1]:
            raise ValueError(f"merge_partial_attention: shard {i} has out {tuple(o.shape)} and lse {tuple(s.shape)}; "
                             f"expected out {tuple(outs[0].shape)} and lse {tuple(outs[0].shape[:-1])}")
    out, lse = _merge(torch.stack(list(outs)), torch.stack(list(lses)))
    return out.to(outs[0].dtype), lse

