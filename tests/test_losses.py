"""POSE losses against values computed by hand on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch

from pose_mcore.models.features import Features
from pose_mcore.pose.losses import (
    adversarial_d_loss,
    adversarial_g_loss,
    consistency_loss,
    distribution_matching_loss,
    feature_st_r1_loss,
    flow_matching_loss,
    st_r1_loss,
)


def test_distribution_matching_gradient_points_from_fake_to_real():
    x0 = torch.tensor([[1.0, 2.0]], requires_grad=True)
    real, fake = torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 4.0]])
    loss = distribution_matching_loss(x0, real, fake)
    # w = mean(|x0 - real|) = 1.5; grad = (fake - real) / w = (4/3, 8/3); loss = 0.5 * mean(grad^2)
    assert loss.item() == pytest.approx(0.5 * ((4 / 3) ** 2 + (8 / 3) ** 2) / 2, rel=1e-6)
    loss.backward()
    assert torch.allclose(x0.grad, torch.tensor([[2 / 3, 4 / 3]]))  # grad / numel
    stepped = x0.detach() - 0.1 * x0.grad
    assert (stepped - real).norm() < (x0.detach() - real).norm()
    assert (stepped - fake).norm() > (x0.detach() - fake).norm()


def test_distribution_matching_normaliser_per_sample_and_clamped():
    x0 = torch.tensor([[1.0, 1.0], [3.0, 3.0]], requires_grad=True)
    real = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # w = 0 (clamped to 1e-6) for the first sample, 2 for the second
    fake = real + 0.5
    distribution_matching_loss(x0, real, fake).backward()
    assert torch.allclose(x0.grad[0], torch.full((2,), 0.5 / 1e-6 / 4), rtol=1e-5)
    assert torch.allclose(x0.grad[1], torch.full((2,), 0.5 / 2 / 4))


def test_flow_matching_loss():
    x0, eps, v = torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([[1.0, 3.0]])
    assert flow_matching_loss(v, x0, eps).item() == pytest.approx(2.0)  # ((1-1)^2 + (1-3)^2) / 2


def test_hinge_losses():
    d_real, d_fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.3])
    assert adversarial_d_loss(d_real, d_fake).item() == pytest.approx(0.25 + 0.65)
    assert adversarial_g_loss(d_fake).item() == pytest.approx(0.85)


def test_non_saturating_losses():
    d_real, d_fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.3])
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731
    want_d = (sp(-2.0) + sp(-0.5)) / 2 + (sp(-2.0) + sp(0.3)) / 2
    assert adversarial_d_loss(d_real, d_fake, "non_saturating").item() == pytest.approx(want_d, rel=1e-6)
    assert adversarial_g_loss(d_fake, "non_saturating").item() == pytest.approx((sp(2.0) + sp(-0.3)) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="kind='wgan'"):
        adversarial_d_loss(d_real, d_fake, "wgan")


def test_consistency_loss():
    assert consistency_loss(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]])).item() == pytest.approx(2.5)


@pytest.mark.parametrize("shape", [(3,), (2, 5, 4)], ids=["logits", "features"])
def test_st_r1_equals_plain_formula(shape):
    gen = torch.Generator().manual_seed(0)
    d_pert, d_clean = torch.randn(shape, generator=gen), torch.randn(shape, generator=gen)
    eps_ms = torch.rand(shape[0], generator=gen) + 0.5
    plain = ((d_pert - d_clean) ** 2).reshape(shape[0], -1).sum(1) / eps_ms
    assert st_r1_loss(d_pert, d_clean, eps_ms).item() == pytest.approx(plain.mean().item(), rel=1e-6)


def test_feature_st_r1_equals_its_formula(tp1):
    """Per sample: each layer's squared difference averaged over the video's tokens and channels, averaged
    over layers, over ``eps_ms``; padding rows (past the token grid) left out; mean over the batch. The
    gradient reaches the perturbed and the clean features."""
    gen = torch.Generator().manual_seed(0)
    grid, tokens, batch, dim = (2, 3, 2), 12, 3, 5
    pert = Features([0, 1], [torch.randn(tokens + 4, batch, dim, generator=gen, requires_grad=True) for _ in range(2)],
                    grid=grid)
    clean = Features([0, 1], [torch.randn(tokens + 4, batch, dim, generator=gen, requires_grad=True) for _ in range(2)],
                     grid=grid)
    for f in (pert, clean):  # padding rows that would dominate the penalty if counted
        with torch.no_grad():
            for h in f.hidden:
                h[tokens:] = 1e3 * (1 + torch.arange(len(f.hidden[0]) - tokens))[:, None, None]
    eps_ms = torch.rand(batch, generator=gen) + 0.5
    want = sum(((a[:tokens] - b[:tokens]) ** 2).mean(dim=(0, 2))
               for a, b in zip(pert.hidden, clean.hidden, strict=True)) / 2
    loss = feature_st_r1_loss(pert, clean, eps_ms)
    assert loss.item() == pytest.approx((want / eps_ms).mean().item(), rel=1e-6)
    loss.backward()
    assert all(h.grad[:tokens].abs().sum() > 0 and h.grad[tokens:].abs().sum() == 0
               for h in pert.hidden + clean.hidden)
