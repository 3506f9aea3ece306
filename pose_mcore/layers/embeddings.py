"""Embeddings shared by the video DiTs: 3-D patches, sinusoidal timesteps, small MLP projections."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pose_mcore.layers.norms import FP32LayerNorm

_ACTIVATIONS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


class PatchEmbed3D(nn.Conv3d):
    """Non-overlapping 3-D patches of a latent video ``[b, c, f, h, w]`` -> tokens ``[s, b, d]``."""

    def __init__(self, in_channels: int, hidden_size: int, patch_size: tuple[int, int, int]) -> None:
        super().__init__(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def grid(self, shape: torch.Size) -> tuple[int, int, int]:
        """Token grid ``(f, h, w)`` of an input shape, checking that patches tile it exactly."""
        if len(shape) != 5 or shape[1] != self.in_channels:
            raise ValueError(f"hidden_states must be [batch, {self.in_channels}, frames, height, width]; "
                             f"got shape {tuple(shape)}")
        bad = [f"{name}={n} not divisible by patch {p}"
               for name, n, p in zip(("frames", "height", "width"), shape[2:], self.kernel_size, strict=True) if n % p]
        if bad:
            raise ValueError(f"hidden_states shape {tuple(shape)} does not fit the patch size "
                             f"{tuple(self.kernel_size)}: {', '.join(bad)}")
        return tuple(n // p for n, p in zip(shape[2:], self.kernel_size, strict=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.grid(x.shape)
        return super().forward(x).flatten(2).permute(2, 0, 1).contiguous()


def timestep_sinusoid(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[..., dim]`` of timesteps, cosines first (diffusers' flip_sin_to_cos)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    angles = t.float().unsqueeze(-1) * freqs
    emb = torch.cat([angles.cos(), angles.sin()], dim=-1)
    return F.pad(emb, (0, dim % 2))


class MLPEmbedding(nn.Module):
    """``linear_2(act(linear_1(x)))``: the timestep, text and image projections."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, activation: str) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, hidden_dim)
        self.linear_2 = nn.Linear(hidden_dim, out_dim)
        self.act = _ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class ImageEmbedding(nn.Module):
    """Image tokens -> model width: LayerNorm, GELU MLP, LayerNorm (Wan2.1 I2V's CLIP tokens,
    HunyuanVideo-1.5's SigLIP tokens)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm1 = FP32LayerNorm(in_dim)
        self.ff = MLPEmbedding(in_dim, in_dim, out_dim, "gelu")
        self.norm2 = FP32LayerNorm(out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.ff(self.norm1(x)))


class GlyphEmbedding(nn.Module):
    """ByT5 glyph tokens -> model width: LayerNorm, then three linears with GELU between
    (HunyuanVideo-1.5's text-rendering stream)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm = FP32LayerNorm(in_dim, eps=1e-5)
        self.ff = MLPEmbedding(in_dim, hidden_dim, hidden_dim, "gelu")
        self.linear_3 = nn.Linear(hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_3(F.gelu(self.ff(self.norm(x))))


def unpatchify(tokens: torch.Tensor, batch: int, grid: tuple[int, int, int], patch: tuple[int, int, int],
               channels: int, channels_first: bool) -> torch.Tensor:
    """Tokens ``[s, b, prod(patch) * channels]`` back to a video ``[b, channels, f, h, w]``.

    Within a token the values are ordered (pt, ph, pw, c) for Wan and (c, pt, ph, pw) for
    HunyuanVideo (``channels_first``), as their output projections are laid out.
    """
    x = tokens.transpose(0, 1)
    if channels_first:
        x = x.reshape(batch, *grid, channels, *patch).permute(0, 4, 1, 5, 2, 6, 3, 7)
    else:
        x = x.reshape(batch, *grid, *patch, channels).permute(0, 7, 1, 4, 2, 5, 3, 6)
    return x.reshape(batch, channels, *(g * p for g, p in zip(grid, patch, strict=True)))
