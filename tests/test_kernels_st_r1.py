"""ST-R1 ops: the fused perturbation (seeded, statistics, shapes) and the penalty against its plain formula.
Each runs on the Triton kernel (interpreter without a GPU) and on the torch reference."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, KERNEL_BACKEND, assert_close_rel
from pose_kernels import st_r1_penalty, st_r1_perturb
from pose_kernels._dispatch import MAX_GRID, check_grid
from pose_kernels.st_r1 import launch_grid

BACKENDS = [KERNEL_BACKEND, "reference"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_reproducible_by_seed(backend):
    x = torch.randn(2, 3, 4, 5, 7, device=DEVICE)
    a, ms_a = st_r1_perturb(x, 0.1, 0.05, seed=7, backend=backend)
    b, ms_b = st_r1_perturb(x, 0.1, 0.05, seed=7, backend=backend)
    c, _ = st_r1_perturb(x, 0.1, 0.05, seed=8, backend=backend)
    assert torch.equal(a, b) and torch.equal(ms_a, ms_b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("backend", BACKENDS)
def test_spatial_noise_statistics(backend):
    sigma_s = 0.3
    x = torch.zeros(2, 2, 2, 64, 64, device=DEVICE)
    eps, _ = st_r1_perturb(x, sigma_s, 0.0, seed=1, backend=backend)
    n = eps.numel()  # 32768 draws: mean within 5 standard errors, std within 5 % (about 6 standard errors)
    assert abs(eps.mean().item()) < 5 * sigma_s / n**0.5
    assert abs(eps.std().item() / sigma_s - 1) < 0.05
    assert eps[..., :32, :].std() > 0.9 * sigma_s  # not constant over space


@pytest.mark.parametrize("backend", BACKENDS)
def test_temporal_noise_is_one_value_per_frame(backend):
    sigma_t = 0.2
    x = torch.zeros(4, 8, 16, 3, 5, device=DEVICE)
    eps, _ = st_r1_perturb(x, 0.0, sigma_t, seed=2, backend=backend)
    per_frame = eps[..., :1, :1]
    assert torch.equal(eps, per_frame.expand_as(eps))  # constant over H and W
    n = per_frame.numel()  # 512 draws
    assert abs(per_frame.mean().item()) < 5 * sigma_t / n**0.5
    assert abs(per_frame.std().item() / sigma_t - 1) < 0.15
    assert per_frame[:, :, 1:].ne(per_frame[:, :, :1]).all()  # differs from frame to frame


@pytest.mark.parametrize("backend", BACKENDS)
def test_both_noises_and_eps_ms(backend):
    sigma_s, sigma_t = 0.1, 0.4
    x = torch.randn(3, 4, 8, 6, 10, device=DEVICE)
    x_pert, eps_ms = st_r1_perturb(x, sigma_s, sigma_t, seed=3, backend=backend)
    eps = x_pert - x
    assert eps_ms.shape == (3,) and eps_ms.dtype == torch.float32
    assert_close_rel(eps_ms, eps.square().flatten(1).mean(1), 1e-5, "eps_ms")
    frame_means = eps.mean(dim=(3, 4))  # eps_t + the spatial mean of eps_s
    expected_var = sigma_t**2 + sigma_s**2 / 60
    assert abs(frame_means.var().item() / expected_var - 1) < 0.25  # 96 draws
    within = eps - frame_means[..., None, None]
    assert abs(within.std().item() / (sigma_s * (59 / 60) ** 0.5) - 1) < 0.05


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_is_identity_and_noncontiguous_input(backend):
    base = torch.randn(2, 3, 4, 6, 5, device=DEVICE)
    x = base.transpose(3, 4).requires_grad_()  # non-contiguous view of shape [2, 3, 4, 5, 6]
    x_pert, _ = st_r1_perturb(x, 0.1, 0.1, seed=4, backend=backend)
    ref, _ = st_r1_perturb(x.detach().contiguous(), 0.1, 0.1, seed=4, backend=backend)
    assert x_pert.shape == x.shape and torch.equal(x_pert.detach(), ref)
    g = torch.randn_like(x_pert)
    (x_pert * g).sum().backward()
    assert torch.equal(x.grad, g)


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_precision_keeps_dtype(backend):
    if backend == "interpret":
        pytest.skip("the interpreter computes through NumPy, which has no bfloat16")
    x = torch.randn(1, 2, 3, 4, 4, dtype=torch.bfloat16, device=DEVICE)
    x_pert, eps_ms = st_r1_perturb(x, 0.1, 0.1, seed=0, backend=backend)
    assert x_pert.dtype == torch.bfloat16 and eps_ms.dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(5,), (3, 7), (2, 4, 33, 5), (3, 2500)],
                         ids=["logits", "tokens", "features", "several_blocks_per_row"])
def test_penalty_matches_formula(backend, shape):
    gen = torch.Generator().manual_seed(sum(shape))
    d_pert = torch.randn(shape, generator=gen).to(DEVICE).requires_grad_()
    d_clean = torch.randn(shape, generator=gen).to(DEVICE).requires_grad_()
    eps_ms = (torch.rand(shape[0], generator=gen) + 0.1).to(DEVICE).requires_grad_()
    weights = torch.arange(1.0, shape[0] + 1, device=DEVICE)
    out = st_r1_penalty(d_pert, d_clean, eps_ms, backend=backend)
    grads = torch.autograd.grad(out, (d_pert, d_clean, eps_ms), weights)
    formula = ((d_pert - d_clean) ** 2).reshape(shape[0], -1).sum(1) / eps_ms
    expected = torch.autograd.grad(formula, (d_pert, d_clean, eps_ms), weights)
    assert_close_rel(out, formula, 1e-6, "penalty")
    for name, g, e in zip(("d_pert", "d_clean", "eps_ms"), grads, expected, strict=True):
        assert_close_rel(g, e, 1e-6, f"d/d {name}")


@pytest.mark.parametrize("call, error, match", [
    (lambda: st_r1_perturb(torch.zeros(2, 3, 4, 5), 0.1, 0.1, 0), ValueError, r"\[B, C, F, H, W\]; got shape \(2, 3, 4, 5\)"),
    (lambda: st_r1_perturb(torch.zeros(1, 1, 1, 2, 2, dtype=torch.int64), 0.1, 0.1, 0), TypeError, r"x must be float32.*int64"),
    (lambda: st_r1_penalty(torch.zeros(2, 3), torch.zeros(2, 4), torch.ones(2)), ValueError, r"d_pert \(2, 3\) and d_clean \(2, 4\)"),
    (lambda: st_r1_penalty(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(3)), ValueError, r"eps_ms must be \[B\] = \[2\]; got \(3,\)"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize("rows, n", [(1, 32760 * 5120), (2, 75600 * 5120), (2 * 16 * 21, 90 * 160), (5, 1)])
def test_grid_fits_cuda_limits_at_14b_sizes(rows, n):
    """The launch grid of a 14B model's features (480p and 720p x 5120 channels, the sizes that once
    failed with 'invalid argument') and latents stays within CUDA's per-axis limits and covers every
    element once."""
    grid, n_blocks = launch_grid(rows, n)
    assert all(count <= limit for count, limit in zip(grid, MAX_GRID, strict=False))
    assert grid == (rows * n_blocks,) and (n_blocks - 1) * 1024 < n <= n_blocks * 1024


def test_grid_past_the_limit_is_named():
    with pytest.raises(ValueError, match=r"axis 1 has 70000 programs, more than CUDA's 65535"):
        check_grid((1, 70000))
