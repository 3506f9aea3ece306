"""Samplers: the teacher's Euler ODE solver with classifier-free guidance, and the distilled student's
one-step and few-step sampling.

A *velocity function* maps ``(x_t, t [b])`` to the predicted velocity; conditioning is closed over.
Guidance is the standard form ``v = v_uncond + g (v_cond - v_uncond)`` everywhere (so ``g = 1`` is
the conditional model alone; some public DMD code uses ``v_cond + g (v_cond - v_uncond)``, an
effective scale of ``g + 1``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pose_mcore.diffusion.flow import add_noise, shift_time, x0_from_velocity

VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


Guidance = float | Callable[[torch.Tensor], torch.Tensor]
"""A CFG scale, or one per sample from its time ``t [b]`` (a two-expert teacher's: :func:`guidance_of`)."""


def cfg_velocity(v_cond: torch.Tensor, v_uncond: torch.Tensor, guidance: float | torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance, standard form; ``guidance`` a number or one per sample ``[b]``."""
    if isinstance(guidance, torch.Tensor):
        guidance = guidance.to(v_cond).reshape(-1, *[1] * (v_cond.dim() - 1))
    return v_uncond + guidance * (v_cond - v_uncond)


def guided(cond: VelocityFn, uncond: VelocityFn, guidance: Guidance) -> VelocityFn:
    """A velocity function with guidance; ``guidance == 1`` skips the unconditional call."""
    if guidance == 1.0:
        return cond
    if callable(guidance):
        return lambda x, t: cfg_velocity(cond(x, t), uncond(x, t), guidance(t))
    return lambda x, t: cfg_velocity(cond(x, t), uncond(x, t), guidance)


def time_grid(steps: int, shift: float, device: torch.device | str = "cpu") -> torch.Tensor:
    """``steps + 1`` times from 1 to 0, uniform before the shift."""
    return shift_time(torch.linspace(1.0, 0.0, steps + 1, device=device), shift)


@torch.no_grad()
def euler_sample(velocity: VelocityFn, noise: torch.Tensor, steps: int, shift: float = 1.0,
                 times: torch.Tensor | None = None) -> torch.Tensor:
    """Euler on the probability-flow ODE from ``t = 1`` (``noise``) to ``t = 0``, over :func:`time_grid` or the
    given ``times`` (``steps + 1`` of them, e.g. a diffusers scheduler's ``sigmas``)."""
    x = noise
    ts = time_grid(steps, shift, noise.device) if times is None else times.to(noise.device)
    for t, t_next in zip(ts[:-1], ts[1:], strict=True):
        tb = t.expand(x.shape[0])
        x = x + (t_next - t) * velocity(x, tb)
    return x


@torch.no_grad()
def student_sample(velocity: VelocityFn, noise: torch.Tensor, steps: int = 1, shift: float = 1.0,
                   mode: str = "renoise", generator: torch.Generator | None = None) -> torch.Tensor:
    """The distilled generator: one step ``x0 = eps - G(eps, 1)``; with more steps, either re-noise the
    x0 estimate to the next time with fresh noise (``renoise``, DMD2 style) or take Euler steps."""
    if mode == "euler":
        return euler_sample(velocity, noise, steps, shift)
    if mode != "renoise":
        raise ValueError(f"mode={mode!r} must be 'renoise' or 'euler'")
    ts = time_grid(steps, shift, noise.device)
    x = noise
    for i in range(steps):
        tb = ts[i].expand(x.shape[0])
        x0 = x0_from_velocity(x, tb, velocity(x, tb))
        if i == steps - 1:
            return x0
        fresh = torch.randn(x0.shape, generator=generator).to(x0)
        x = add_noise(x0, fresh, ts[i + 1].expand(x.shape[0]))
    return x
