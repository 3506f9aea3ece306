"""Flow-matching identities and samplers against closed forms."""

from __future__ import annotations

import pytest
import torch

from pose_mcore.diffusion.flow import (
    add_noise,
    eps_from_velocity,
    shift_time,
    velocity_target,
    x0_from_velocity,
)
from pose_mcore.diffusion.samplers import cfg_velocity, euler_sample, guided, student_sample, time_grid


def test_noising_and_recovery():
    gen = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 2, 4, generator=gen), torch.randn(3, 2, 4, generator=gen)
    t = torch.tensor([0.0, 0.3, 1.0])
    x_t = add_noise(x0, eps, t)
    assert torch.allclose(x_t[0], x0[0]) and torch.allclose(x_t[2], eps[2])
    v = velocity_target(x0, eps)
    assert torch.allclose(x0_from_velocity(x_t, t, v), x0, atol=1e-6)
    assert torch.allclose(eps_from_velocity(x_t, t, v), eps, atol=1e-6)


def test_time_shift():
    t = torch.tensor([0.0, 0.5, 1.0])
    assert torch.allclose(shift_time(t, 5.0), torch.tensor([0.0, 5 / 6, 1.0]))
    assert torch.equal(shift_time(t, 1.0), t)


def test_cfg_standard_form():
    c, u = torch.tensor([2.0]), torch.tensor([1.0])
    assert cfg_velocity(c, u, 1.0) == c and cfg_velocity(c, u, 0.0) == u and cfg_velocity(c, u, 6.0) == 7.0
    calls = []
    fn = guided(lambda x, t: calls.append("c") or c, lambda x, t: calls.append("u") or u, 1.0)
    fn(None, None)
    assert calls == ["c"]


def _point_mass_velocity(c: torch.Tensor):
    """The exact flow velocity when all data sit at ``c``: ``(x_t - c) / t``."""
    return lambda x, t: (x - c) / t.view(-1, 1)


@pytest.mark.parametrize("steps", [1, 4, 50])
@pytest.mark.parametrize("shift", [1.0, 5.0])
def test_euler_recovers_a_point_mass(steps, shift):
    c = torch.tensor([[1.5, -2.0]])
    noise = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
    out = euler_sample(_point_mass_velocity(c), noise, steps, shift)
    assert torch.allclose(out, c.expand_as(out), atol=1e-5)
    grid = time_grid(steps, shift)
    assert grid[0] == 1 and grid[-1] == 0 and (grid[1:] < grid[:-1]).all()


@pytest.mark.parametrize("mode", ["renoise", "euler"])
@pytest.mark.parametrize("steps", [1, 4])
def test_student_sampling_recovers_a_point_mass(mode, steps):
    c = torch.tensor([[0.5, 3.0]])
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(2))
    out = student_sample(_point_mass_velocity(c), noise, steps, shift=3.0, mode=mode,
                         generator=torch.Generator().manual_seed(3))
    assert torch.allclose(out, c.expand_as(out), atol=1e-5)
    with pytest.raises(ValueError, match="mode='ddim'"):
        student_sample(_point_mass_velocity(c), noise, 2, mode="ddim")
