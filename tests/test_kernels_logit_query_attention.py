"""Logit-query cross-attention against the plain torch formula (fp32), on odd shapes, with key lengths,
through the LSE merge of shards, and with bad input. Kernel (interpreter without a GPU) and reference."""

from __future__ import annotations

import importlib
import itertools

import pytest
import torch
from conftest import DEVICE, KERNEL_BACKEND, assert_close_rel
from pose_kernels import logit_query_attention, merge_partial_attention

# the module (the package re-exports a function of the same name)
lqa = importlib.import_module("pose_kernels.logit_query_attention")

BACKENDS = [KERNEL_BACKEND, "reference"]
REL = 1e-5  # fp32: observed errors are around 1e-7 of the tensor's scale


def plain_attention(q, k, v, key_lengths=None, scale=None):
    """softmax(q k^T * scale) v and logsumexp of the scores: the formula, with autograd."""
    scores = q @ k.transpose(-1, -2) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if key_lengths is not None:
        valid = torch.arange(k.shape[2], device=k.device)[None, :] < key_lengths[:, None]
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
    return torch.softmax(scores, dim=-1) @ v, torch.logsumexp(scores, dim=-1)


def _inputs(b, h, n, s, d, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).to(DEVICE).requires_grad_()
            for shape in ((b, h, n, d), (b, h, s, d), (b, h, s, d))]


def _grads(outputs, inputs, seed):
    gen = torch.Generator().manual_seed(seed)
    out, lse = outputs
    loss = ((out * torch.randn(out.shape, generator=gen).to(out.device)).sum()
            + (lse * torch.randn(lse.shape, generator=gen).to(lse.device)).sum())
    return torch.autograd.grad(loss, inputs)


CASES = {  # (B, H, N, S, D, key_lengths)
    "n7_d24_lengths": (2, 3, 7, 150, 24, [150, 77]),
    "n1_d16": (1, 2, 1, 64, 16, None),
    "n7_d16_s129_short": (3, 2, 7, 129, 16, [129, 1, 65]),
    "n1_d24_s200_lengths": (2, 4, 1, 200, 24, [3, 200]),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES)
def test_matches_formula(backend, case, monkeypatch):
    b, h, n, s, d, lengths = CASES[case]
    monkeypatch.setattr(lqa, "_REFERENCE_CHUNK", 48)  # several chunks: the reference's own LSE merge
    key_lengths = torch.tensor(lengths, device=DEVICE) if lengths else None
    q, k, v = _inputs(b, h, n, s, d, seed=s)
    out, lse = logit_query_attention(q, k, v, key_lengths, backend=backend)
    ref_out, ref_lse = plain_attention(q, k, v, key_lengths)
    assert out.shape == (b, h, n, d) and lse.shape == (b, h, n) and out.dtype == q.dtype
    assert_close_rel(out, ref_out, REL, "out")
    assert_close_rel(lse, ref_lse, REL, "lse")
    grads = _grads((out, lse), (q, k, v), seed=1)
    ref_grads = _grads((ref_out, ref_lse), (q, k, v), seed=1)
    for name, g, e in zip("qkv", grads, ref_grads, strict=True):
        assert_close_rel(g, e, REL, f"d{name}")
    if key_lengths is not None:  # keys past a sample's length get no gradient
        for i, length in enumerate(lengths):
            assert not grads[1][i, :, length:].any() and not grads[2][i, :, length:].any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_scale(backend):
    q, k, v = _inputs(1, 2, 3, 40, 16, seed=0)
    out, lse = logit_query_attention(q, k, v, scale=0.7, backend=backend)
    ref_out, ref_lse = plain_attention(q, k, v, scale=0.7)
    assert_close_rel(out, ref_out, REL, "out")
    assert_close_rel(lse, ref_lse, REL, "lse")


@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_without_keys(backend):
    q, k, v = _inputs(2, 1, 2, 20, 16, seed=3)
    out, lse = logit_query_attention(q, k, v, torch.tensor([0, 20], device=DEVICE), backend=backend)
    assert not out[0].any() and torch.isneginf(lse[0]).all()
    ref_out, _ = plain_attention(q[1:], k[1:], v[1:])
    assert_close_rel(out[1:], ref_out, REL, "out")
    grads = torch.autograd.grad(out.sum() + lse[1].sum(), (q, k, v))
    assert all(torch.isfinite(g).all() for g in grads)
    assert not grads[0][0].any() and not grads[1][0].any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_merging_shards_equals_whole_sequence(backend):
    """The sequence-parallel case: each shard of keys attended separately, merged by log-sum-exp;
    values and gradients (which flow through each shard's lse) equal attention over all keys."""
    q, k, v = _inputs(2, 3, 5, 131, 24, seed=5)
    bounds = [0, 40, 41, 131]
    parts = [logit_query_attention(q, k[:, :, a:z], v[:, :, a:z], backend=backend) for a, z in itertools.pairwise(bounds)]
    out, lse = merge_partial_attention([p[0] for p in parts], [p[1] for p in parts])
    ref_out, ref_lse = plain_attention(q, k, v)
    assert_close_rel(out, ref_out, REL, "merged out")
    assert_close_rel(lse, ref_lse, REL, "merged lse")
    for name, g, e in zip("qkv", _grads((out, lse), (q, k, v), 2), _grads((ref_out, ref_lse), (q, k, v), 2), strict=True):
        assert_close_rel(g, e, REL, f"d{name}")


def test_merge_with_an_empty_shard():
    out = torch.randn(1, 1, 2, 4)
    lse = torch.randn(1, 1, 2)
    merged, merged_lse = merge_partial_attention([out, torch.zeros_like(out)], [lse, torch.full_like(lse, float("-inf"))])
    assert torch.allclose(merged, out) and torch.allclose(merged_lse, lse)


@pytest.mark.parametrize("args, error, match", [
    ((torch.zeros(2, 3, 4), torch.zeros(2, 3, 5, 4), torch.zeros(2, 3, 5, 4)), ValueError, r"q must be 4-D .* got shape \(2, 3, 4\)"),
    ((torch.zeros(2, 3, 1, 8), torch.zeros(2, 2, 5, 8), torch.zeros(2, 2, 5, 8)), ValueError, r"heads differs: q \(2, 3, 1, 8\) vs k \(2, 2, 5, 8\)"),
    ((torch.zeros(2, 3, 1, 8), torch.zeros(2, 3, 5, 16), torch.zeros(2, 3, 5, 16)), ValueError, r"head dim differs"),
    ((torch.zeros(1, 1, 1, 8), torch.zeros(1, 1, 5, 8), torch.zeros(1, 1, 6, 8)), ValueError, r"k \(1, 1, 5, 8\) and v \(1, 1, 6, 8\)"),
    ((torch.zeros(1, 1, 1, 8, dtype=torch.int32),) * 3, TypeError, r"q must be float32.*int32"),
    ((torch.zeros(1, 1, 1, 8), torch.zeros(1, 1, 5, 8, dtype=torch.float64), torch.zeros(1, 1, 5, 8)), TypeError, r"k must be"),
])
def test_bad_input(args, error, match):
    with pytest.raises(error, match=match):
        logit_query_attention(*args)


def test_bad_key_lengths_and_too_many_queries():
    q, k, v = (torch.zeros(shape, device=DEVICE) for shape in ((2, 1, 1, 8), (2, 1, 5, 8), (2, 1, 5, 8)))
    with pytest.raises(ValueError, match=r"key_lengths must be an integer tensor \[B\] = \[2\]"):
        logit_query_attention(q, k, v, torch.tensor([1.0, 2.0], device=DEVICE))
    with pytest.raises(ValueError, match=r"at most 128 queries"):
        logit_query_attention(*(torch.zeros(shape, device=DEVICE) for shape in ((1, 1, 129, 16), (1, 1, 5, 16),
                                                                                 (1, 1, 5, 16))),
                              backend=KERNEL_BACKEND)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_kernel_matches_fp32_formula_on_gpu():
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(shape, device="cuda", generator=gen) for shape in ((2, 8, 33, 128), (2, 8, 5000, 128), (2, 8, 5000, 128)))
    lengths = torch.tensor([5000, 1234], device="cuda")
    qb, kb, vb = (t.bfloat16().requires_grad_() for t in (q, k, v))
    out, lse = logit_query_attention(qb, kb, vb, lengths, backend="triton")
    ref_out, ref_lse = plain_attention(q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), lengths)
    assert_close_rel(out.float(), ref_out, 2e-2, "bf16 out")
    assert_close_rel(lse, ref_lse, 1e-2, "bf16 lse")
    for name, g, e in zip("qkv", _grads((out.float(), lse), (qb, kb, vb), 3), _grads((ref_out, ref_lse), (q, k, v), 3), strict=True):
        assert_close_rel(g.float(), e, 3e-2, f"bf16 d{name}")
