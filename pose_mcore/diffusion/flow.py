"""Flow-matching conventions shared by every model (docs/method.md, section 1).

``x_t = (1 - t) x0 + t eps`` with ``t = 1`` pure noise; the network predicts the velocity
``v = eps - x0``; its time input is ``1000 * t`` (as Wan and HunyuanVideo were trained).
"""

from __future__ import annotations

import torch


def _b(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-sample ``t [b]`` shaped to broadcast against ``like [b, ...]``."""
    return t.reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def add_noise(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = (1 - t) x0 + t eps``."""
    tt = _b(t, x0)
    return (1 - tt) * x0 + tt * eps


def velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """The flow-matching regression target ``eps - x0``."""
    return eps - x0


def x0_from_velocity(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``x0 = x_t - t v``."""
    return x_t - _b(t, x_t) * v


def eps_from_velocity(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``eps = x_t + (1 - t) v``."""
    return x_t + (1 - _b(t, x_t)) * v


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan / SD3 time shift ``s t / (1 + (s - 1) t)``; ``shift = 1`` is the identity."""
    return shift * t / (1 + (shift - 1) * t)


def model_timestep(t: torch.Tensor) -> torch.Tensor:
    """The DiT's time input for ``t``: ``1000 * t``."""
    return 1000 * t
