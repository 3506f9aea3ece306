"""The quality measures: zero distance for identical sets, perfect attribute scores on real videos,
and worse scores for corrupted ones."""

from __future__ import annotations

import torch
from torch.utils.data import default_collate

from pose_mcore.data.procedural import ProceduralConfig, ProceduralVideos
from pose_mcore.evaluation.metrics import FeatureFD, attribute_scores, frechet_distance


def _real(n: int, seed: int):
    data = ProceduralVideos(ProceduralConfig(), n, seed=seed)
    return data, default_collate([data[i] for i in range(n)])


def test_frechet_distance_basics():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(500, 4, generator=gen, dtype=torch.float64)
    assert abs(frechet_distance(a, a)) < 1e-8
    assert abs(frechet_distance(a, a + 2.0) - 16.0) < 1e-6  # mean shift of 2 in 4 dims, same covariance


def test_real_videos_score_well_and_noise_badly():
    data, batch = _real(64, 1)
    _, held_out = _real(64, 2)
    fd = FeatureFD(4)
    close = fd.distance(held_out["latents"], batch["latents"])
    noisy = fd.distance(held_out["latents"], batch["latents"] + torch.randn(batch["latents"].shape))
    assert close < noisy / 5
    scores = attribute_scores(batch["latents"], data.colours, batch["colour"], batch["direction"],
                              batch["first_frame"])
    assert scores["one_shape"] == 1.0 and scores["colour"] == 1.0 and scores["direction"] == 1.0
    assert scores["motion_jitter"] < 1e-6 and scores["first_frame_mse"] == 0.0
    reversed_time = batch["latents"].flip(2)
    assert attribute_scores(reversed_time, data.colours, batch["colour"], batch["direction"])["direction"] == 0.0
    swapped = attribute_scores(batch["latents"], data.colours, (batch["colour"] + 1) % 4, batch["direction"])
    assert swapped["colour"] == 0.0
