"""POSE losses, exactly as docs/method.md (from the project's pose_spec) states them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pose_kernels import st_r1_penalty

from pose_mcore.models.features import Features
from pose_mcore.parallel.context import gather_shards, token_shard_group


def _per_sample_mean(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).mean(dim=1)


def distribution_matching_loss(x0: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
    """Phase I generator loss (DMD): ``0.5 * mean((x0 - sg(x0 - grad))^2)`` with
    ``grad = (x0_fake - x0_real) / w`` and ``w = mean |x0 - x0_real|`` per sample (fp32, detached,
    at least 1e-6). Its gradient w.r.t. ``x0`` is ``grad / numel``: a descent step moves the sample
    toward the real score's estimate and away from the fake one's."""
    x0f = x0.float()
    with torch.no_grad():
        w = _per_sample_mean((x0f - x0_real.float()).abs()).clamp_min(1e-6)
        grad = (x0_fake.float() - x0_real.float()) / w.view(-1, *([1] * (x0.dim() - 1)))
        target = x0f - grad
    return 0.5 * F.mse_loss(x0f, target)


def flow_matching_loss(v_pred: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``mean(((eps - x0) - v_pred)^2)``: the teacher's pre-training loss and the fake score's update."""
    return F.mse_loss(v_pred.float(), (eps - x0).float())


def adversarial_d_loss(d_real: torch.Tensor, d_fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Discriminator loss: hinge ``mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))`` or
    non-saturating ``mean(softplus(-D(real))) + mean(softplus(D(fake)))``."""
    if kind == "hinge":
        return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
    if kind == "non_saturating":
        return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
    raise ValueError(f"adversarial loss kind={kind!r} must be 'hinge' or 'non_saturating'")


def adversarial_g_loss(d_fake: torch.Tensor, kind: str = "hinge") -> torch.Tensor:
    """Generator loss: hinge ``-mean(D(fake))`` or non-saturating ``mean(softplus(-D(fake)))``."""
    if kind == "hinge":
        return -d_fake.mean()
    if kind == "non_saturating":
        return F.softplus(-d_fake).mean()
    raise ValueError(f"adversarial loss kind={kind!r} must be 'hinge' or 'non_saturating'")


def st_r1_loss(d_pert: torch.Tensor, d_clean: torch.Tensor, eps_ms: torch.Tensor) -> torch.Tensor:
    """ST-R1: ``mean_b((D(x_pert) - D(x_t))_b^2 / mean_b(eps^2))`` (summed over non-batch dims for features)."""
    return st_r1_penalty(d_pert, d_clean, eps_ms).mean()


def feature_st_r1_loss(pert: Features, clean: Features, eps_ms: torch.Tensor) -> torch.Tensor:
    """ST-R1 on the backbone's features (the spec's variant): per sample, the squared difference of every
    feature layer averaged over the video's tokens and channels, averaged over the layers and divided by
    ``eps_ms``; then the mean over the batch. Padding tokens are left out, and the token shards of a
    sequence- or context-parallel layout are summed (:func:`gather_shards`, so the gradients keep the
    convention of the token-split region)."""
    n = clean.valid_tokens()
    # per-sample sums over this rank's real tokens; [s, b, d] -> [b, s, d] (a view: a copy only for b > 1)
    local = sum(st_r1_penalty(a[:n].transpose(0, 1), b[:n].transpose(0, 1), eps_ms)
                for a, b in zip(pert.hidden, clean.hidden, strict=True)) if n else eps_ms.new_zeros(eps_ms.shape)
    total = gather_shards(local[None], token_shard_group(clean.sequence_parallel)).sum(0)
    f, h, w = clean.grid
    return (total / (f * h * w * clean.hidden[0].shape[-1] * len(clean.hidden))).mean()


def consistency_loss(x0: torch.Tensor, x0_teacher: torch.Tensor) -> torch.Tensor:
    """Frame consistency: ``mean((x0 - x0_teacher)^2)``."""
    return F.mse_loss(x0.float(), x0_teacher.float())
