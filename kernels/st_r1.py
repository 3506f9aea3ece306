"""Spatio-temporal finite-difference R1 (ST-R1): the fused perturbation and the penalty.

``st_r1_perturb(x, sigma_s, sigma_t, seed)`` draws, for a latent video ``x [B, C, F, H, W]``,
``eps_s = sigma_s * N(0, 1)`` for every element and ``eps_t = sigma_t * N(0, 1)`` once per
``(b, c, f)`` (shared over H and W), and returns ``x_pert = x + eps_s + eps_t`` together with
``eps_ms[b] = mean((eps_s + eps_t)^2)`` over the sample. The Triton kernel draws both from the seed
with Philox in registers and never materialises ``eps``; the gradient w.r.t. ``x`` is the identity.

``st_r1_penalty(d_pert, d_clean, eps_ms)`` returns, per sample, ``sum((d_pert - d_clean)^2) / eps_ms``
over all non-batch dimensions: logits ``[B]`` or feature maps ``[B, ...]`` (the feature variant).

Random streams: the Triton kernel uses Philox counters ``i`` (element ``i`` of ``eps_s``) and
``numel + r`` (row ``r = (b, c, f)`` of ``eps_t``); the torch reference uses a CPU ``torch.Generator``.
Each is reproducible by seed; they are different streams with the same distribution.
"""

from __future__ import annotations

import torch
from pose_kernels._dispatch import HAVE_TRITON, check_float, check_grid, select_backend

if HAVE_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _row_block(n_blocks, BLOCK: tl.constexpr):
        """(row, block, column offsets) of this program: the grid is 1-D, ``rows * n_blocks`` programs."""
        pid = tl.program_id(0).to(tl.int64)
        row = pid // n_blocks
        blk = pid % n_blocks
        return pid, row, blk * BLOCK + tl.arange(0, BLOCK)

    @triton.jit
    def _perturb_kernel(x_ptr, out_ptr, partial_ptr, seed, sigma_s, sigma_t, hw, numel, n_blocks,
                        BLOCK: tl.constexpr):
        pid, row, cols = _row_block(n_blocks, BLOCK)
        mask = cols < hw
        offs = row * hw + cols
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        eps_t = tl.randn(seed, numel + row) * sigma_t
        eps = tl.randn(seed, offs) * sigma_s + eps_t
        tl.store(out_ptr + offs, (x.to(tl.float32) + eps).to(x.dtype), mask=mask)
        tl.store(partial_ptr + pid, tl.sum(tl.where(mask, eps * eps, 0.0), axis=0))

    @triton.jit
    def _penalty_fwd_kernel(a_ptr, b_ptr, partial_ptr, n, n_blocks, BLOCK: tl.constexpr):
        pid, row, cols = _row_block(n_blocks, BLOCK)
        mask = cols < n
        a = tl.load(a_ptr + row * n + cols, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + row * n + cols, mask=mask, other=0.0).to(tl.float32)
        diff = a - b
        tl.store(partial_ptr + pid, tl.sum(diff * diff, axis=0))

    @triton.jit
    def _penalty_bwd_kernel(a_ptr, b_ptr, coef_ptr, grad_a_ptr, grad_b_ptr, n, n_blocks, BLOCK: tl.constexpr):
        _, row, cols = _row_block(n_blocks, BLOCK)
        mask = cols < n
        a = tl.load(a_ptr + row * n + cols, mask=mask, other=0.0)
        b = tl.load(b_ptr + row * n + cols, mask=mask, other=0.0).to(tl.float32)
        coef = tl.load(coef_ptr + row)  # 2 * grad_out[b] / eps_ms[b]
        g = coef * (a.to(tl.float32) - b)
        tl.store(grad_a_ptr + row * n + cols, g.to(a.dtype), mask=mask)
        tl.store(grad_b_ptr + row * n + cols, (-g).to(a.dtype), mask=mask)

_BLOCK = 1024


def launch_grid(rows: int, n: int) -> tuple[tuple[int], int]:
    """``(grid, n_blocks)`` for ``rows`` rows of ``n`` elements: one program per block of ``_BLOCK``
    elements, all on grid axis 0 (up to 2**31 - 1 programs; axes 1 and 2 stop at 65,535, which a
    14B model's features, 75,600 x 5,120 per sample, would pass)."""
    n_blocks = -(-n // _BLOCK)
    return check_grid((rows * n_blocks,)), n_blocks


def _check_video(x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 5:
        raise ValueError(f"st_r1_perturb: x must be [B, C, F, H, W]; got shape {tuple(x.shape)}")
    check_float("st_r1_perturb: x", x)
    # A non-contiguous view is copied once: the kernel walks rows of H * W contiguous elements.
    return x.contiguous()


def st_r1_perturb_reference(x: torch.Tensor, sigma_s: float, sigma_t: float, seed: int
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference of :func:`st_r1_perturb` (materialises the noise; CPU generator)."""
    x = _check_video(x)
    gen = torch.Generator().manual_seed(int(seed))
    b, c, f, _, _ = x.shape
    eps_s = torch.randn(x.shape, generator=gen) * sigma_s
    eps_t = torch.randn((b, c, f, 1, 1), generator=gen) * sigma_t
    eps = (eps_s + eps_t).to(x.device)
    x_pert = (x.float() + eps).to(x.dtype)
    return x_pert, eps.square().flatten(1).mean(dim=1)


def _st_r1_perturb_triton(x: torch.Tensor, sigma_s: float, sigma_t: float, seed: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    x = _check_video(x)
    b, c, f, h, w = x.shape
    rows, hw = b * c * f, h * w
    grid, n_blocks = launch_grid(rows, hw)
    out = torch.empty_like(x)
    partial = torch.empty(rows, n_blocks, dtype=torch.float32, device=x.device)
    _perturb_kernel[grid](x, out, partial, int(seed), float(sigma_s), float(sigma_t), hw, x.numel(),
                                      n_blocks, BLOCK=_BLOCK)
    return out, partial.view(b, -1).sum(dim=1) / (c * f * hw)


class _Perturb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, sigma_s, sigma_t, seed, backend):
        fn = st_r1_perturb_reference if backend == "reference" else _st_r1_perturb_triton
        x_pert, eps_ms = fn(x, sigma_s, sigma_t, seed)
        ctx.mark_non_differentiable(eps_ms)
        return x_pert, eps_ms

    @staticmethod
    def backward(ctx, grad_pert, grad_ms):
        return grad_pert, None, None, None, None


def st_r1_perturb(x: torch.Tensor, sigma_s: float, sigma_t: float, seed: int, backend: str | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x + eps_s + eps_t, eps_ms)`` for ``x [B, C, F, H, W]``; see the module docstring."""
    return _Perturb.apply(x, sigma_s, sigma_t, seed, select_backend(x, backend))


def _check_penalty(d_pert: torch.Tensor, d_clean: torch.Tensor, eps_ms: torch.Tensor) -> None:
    if d_pert.shape != d_clean.shape or d_pert.dim() < 1:
        raise ValueError(f"st_r1_penalty: d_pert {tuple(d_pert.shape)} and d_clean {tuple(d_clean.shape)} must "
                         "have the same shape [B, ...]")
    if eps_ms.shape != (d_pert.shape[0],):
        raise ValueError(f"st_r1_penalty: eps_ms must be [B] = [{d_pert.shape[0]}]; got {tuple(eps_ms.shape)}")
    for name, t in (("d_pert", d_pert), ("d_clean", d_clean), ("eps_ms", eps_ms)):
        check_float(f"st_r1_penalty: {name}", t)
    if d_pert.dtype != d_clean.dtype:
        raise TypeError(f"st_r1_penalty: d_pert is {d_pert.dtype} but d_clean is {d_clean.dtype}")


def st_r1_penalty_reference(d_pert: torch.Tensor, d_clean: torch.Tensor, eps_ms: torch.Tensor) -> torch.Tensor:
    """Torch reference of :func:`st_r1_penalty` (differentiable by autograd)."""
    _check_penalty(d_pert, d_clean, eps_ms)
    diff = (d_pert.float() - d_clean.float()).reshape(d_pert.shape[0], -1)
    return diff.square().sum(dim=1) / eps_ms.float()


class _PenaltyTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, d_pert, d_clean, eps_ms):
        a = d_pert.reshape(d_pert.shape[0], -1).contiguous()
        b = d_clean.reshape(d_clean.shape[0], -1).contiguous()
        rows, n = a.shape
        grid, n_blocks = launch_grid(rows, n)
        partial = torch.empty(rows, n_blocks, dtype=torch.float32, device=a.device)
        _penalty_fwd_kernel[grid](a, b, partial, n, n_blocks, BLOCK=_BLOCK)
        sq = partial.sum(dim=1)
        ms = eps_ms.float()
        ctx.save_for_backward(a, b, ms, sq)
        ctx.shape = d_pert.shape
        return sq / ms

    @staticmethod
    def backward(ctx, grad_out):
        a, b, ms, sq = ctx.saved_tensors
        rows, n = a.shape
        coef = (2 * grad_out.float() / ms).contiguous()
        grad_a, grad_b = torch.empty_like(a), torch.empty_like(b)
        grid, n_blocks = launch_grid(rows, n)
        _penalty_bwd_kernel[grid](a, b, coef, grad_a, grad_b, n, n_blocks, BLOCK=_BLOCK)
        grad_ms = -grad_out.float() * sq / ms.square()
        return grad_a.view(ctx.shape), grad_b.view(ctx.shape), grad_ms


def st_r1_penalty(d_pert: torch.Tensor, d_clean: torch.Tensor, eps_ms: torch.Tensor, backend: str | None = None
                  ) -> torch.Tensor:
    """Per-sample ``sum((d_pert - d_clean)^2) / eps_ms`` over non-batch dims, fp32 ``[B]``, differentiable."""
    if select_backend(d_pert, backend) == "reference":
        return st_r1_penalty_reference(d_pert, d_clean, eps_ms)
    _check_penalty(d_pert, d_clean, eps_ms)
    return _PenaltyTriton.apply(d_pert, d_clean, eps_ms)
