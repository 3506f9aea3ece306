"""3-D rotary position embedding over (frame, height, width), shared by Wan and HunyuanVideo.

Each axis gets its own slice of the head dimension; within a slice channels are rotated in
interleaved pairs (0,1), (2,3), ... as the official Wan and HunyuanVideo code and diffusers do.
"""

from __future__ import annotations

import torch


def rope_3d(axes_dim: tuple[int, int, int], grid: tuple[int, int, int], theta: float,
            device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosines and sines ``[f*h*w, sum(axes_dim)]`` (fp32) for a token grid in raster order.

    Angles are computed in ``dtype`` and rounded to fp32 once: Wan's reference computes them in
    float64, HunyuanVideo's in float32.
    """
    cos_axes, sin_axes = [], []
    for axis, (dim, n) in enumerate(zip(axes_dim, grid, strict=True)):
        inv_freq = 1.0 / theta ** (torch.arange(0, dim, 2, dtype=dtype, device=device) / dim)
        angles = torch.outer(torch.arange(n, device=device, dtype=dtype), inv_freq)
        shape = [1, 1, 1, dim]
        shape[axis] = n
        cos_axes.append(angles.cos().repeat_interleave(2, dim=1).float().view(shape).expand(*grid, dim))
        sin_axes.append(angles.sin().repeat_interleave(2, dim=1).float().view(shape).expand(*grid, dim))
    n_tokens = grid[0] * grid[1] * grid[2]
    cos = torch.cat(cos_axes, dim=-1).reshape(n_tokens, -1)
    sin = torch.cat(sin_axes, dim=-1).reshape(n_tokens, -1)
    return cos, sin


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs of ``x [..., head_dim]``; ``cos``/``sin`` broadcast to ``x``."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2).type_as(x)
