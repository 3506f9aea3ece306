"""Quality measures for the procedural moving-shapes videos.

- ``FeatureFD``: the Frechet distance between generated and held-out real videos in a fixed feature
  space: a seeded random 3-D convolution stack (never trained, so no model of ours grades itself),
  globally pooled. Lower is better.
- ``attribute_scores``: what the known data let us check per video: one shape present, its colour
  the prompted one, its motion straight and steady in the prompted direction, and (I2V) the first
  frame equal to the condition.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pose_mcore.data.procedural import DIRECTIONS


class FeatureFD:
    """Frechet distance in the pooled features of a fixed random 3-D conv network."""

    def __init__(self, channels: int, width: int = 64, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        layers = []
        c = channels
        for w in (width // 2, width, width):
            conv = nn.Conv3d(c, w, kernel_size=3, padding=1)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2.0 / conv.weight[0].numel()) ** 0.5)
                conv.bias.zero_()
            layers += [conv, nn.ReLU()]
            c = w
        self.net = nn.Sequential(*layers).eval()

    @torch.no_grad()
    def features(self, videos: torch.Tensor) -> torch.Tensor:
        h = self.net(videos.float())
        return torch.cat([h.mean(dim=(2, 3, 4)), h.amax(dim=(2, 3, 4))], dim=1).double()

    @torch.no_grad()
    def distance(self, real: torch.Tensor, fake: torch.Tensor) -> float:
        return frechet_distance(self.features(real), self.features(fake))


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` for feature rows ``a [n, d]``, ``b [m, d]``."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    vals, vecs = torch.linalg.eigh(cov_a)
    sqrt_a = vecs @ torch.diag(vals.clamp_min(0).sqrt()) @ vecs.T
    cross = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp_min(0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * cross)


@torch.no_grad()
def attribute_scores(videos: torch.Tensor, colours: torch.Tensor, colour: torch.Tensor, direction: torch.Tensor,
                     first_frame: torch.Tensor | None = None) -> dict[str, float]:
    """Mean per-video scores in [0, 1] (higher is better), except ``motion_jitter`` (pixels, lower is better)
    and ``first_frame_mse`` (lower is better).

    A pixel belongs to the shape when its channel vector is closer to a shape colour than to the zero
    background. ``one_shape``: the foreground of every frame is a single blob of plausible size.
    ``colour``: the foreground's mean vector is nearest to the prompted colour. ``direction``: the
    centroid moves the prompted way. ``motion_jitter``: the spread of the frame-to-frame centroid steps.
    """
    v = videos.float()
    n, c, f, h, w = v.shape
    norms = colours.norm(dim=1).min()
    fg = v.norm(dim=1) > norms / 2  # [n, f, h, w]
    area = fg.float().sum(dim=(2, 3))  # [n, f]
    one_shape = ((area > 2) & (area < 0.25 * h * w)).all(dim=1).float()
    weights = fg.float().unsqueeze(1)
    mean_vec = (v * weights).sum(dim=(2, 3, 4)) / weights.sum(dim=(2, 3, 4)).clamp_min(1)
    nearest = torch.cdist(mean_vec, colours).argmin(dim=1)
    colour_ok = (nearest == colour).float()
    ys = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w)
    m = fg.float()
    cy = (m * ys).sum(dim=(2, 3)) / area.clamp_min(1)
    cx = (m * xs).sum(dim=(2, 3)) / area.clamp_min(1)
    steps = torch.stack([cy[:, 1:] - cy[:, :-1], cx[:, 1:] - cx[:, :-1]], dim=-1)  # [n, f-1, 2]
    want = torch.tensor(DIRECTIONS, dtype=torch.float32)[direction]  # [n, 2]
    along = (steps * want.unsqueeze(1)).sum(-1).mean(1)
    direction_ok = (along > 0.5).float()
    jitter = (steps - steps.mean(1, keepdim=True)).norm(dim=-1).mean(1)
    out = {"one_shape": one_shape.mean().item(), "colour": colour_ok.mean().item(),
           "direction": direction_ok.mean().item(), "motion_jitter": jitter.mean().item()}
    if first_frame is not None:
        out["first_frame_mse"] = F.mse_loss(v[:, :, :1], first_frame.float()).item()
    return out
