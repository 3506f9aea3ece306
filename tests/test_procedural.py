"""The procedural dataset: reproducible, with the motion and colour its attributes say."""

from __future__ import annotations

import pytest
import torch

from pose_mcore.data.procedural import DIRECTIONS, ProceduralConfig, ProceduralVideos


def test_reproducible_and_varied():
    cfg = ProceduralConfig()
    a, b = ProceduralVideos(cfg, 50, seed=3), ProceduralVideos(cfg, 50, seed=3)
    assert all(torch.equal(a[i]["latents"], b[i]["latents"]) and torch.equal(a[i]["text"], b[i]["text"])
               for i in range(50))
    assert len({(int(a[i]["shape"]), int(a[i]["colour"]), int(a[i]["direction"])) for i in range(50)}) > 10
    assert not torch.equal(ProceduralVideos(cfg, 5, seed=4)[0]["latents"], a[0]["latents"])


def test_motion_colour_and_first_frame():
    cfg = ProceduralConfig(frames=6, height=20, width=20, speed=2)
    data = ProceduralVideos(cfg, 30)
    for i in range(30):
        s = data[i]
        video = s["latents"]
        assert video.shape == (cfg.channels, cfg.frames, cfg.height, cfg.width)
        assert torch.equal(s["first_frame"], video[:, :1])
        mass = (video.abs().sum(0) > 0).float()  # [F, H, W]
        ys = torch.arange(cfg.height).view(1, -1, 1)
        xs = torch.arange(cfg.width).view(1, 1, -1)
        cy = (mass * ys).sum((1, 2)) / mass.sum((1, 2))
        cx = (mass * xs).sum((1, 2)) / mass.sum((1, 2))
        dy, dx = DIRECTIONS[int(s["direction"])]
        assert torch.allclose(cy[1:] - cy[:-1], torch.full((cfg.frames - 1,), float(dy * cfg.speed)))
        assert torch.allclose(cx[1:] - cx[:-1], torch.full((cfg.frames - 1,), float(dx * cfg.speed)))
        inside = video[:, 0][:, mass[0] > 0]
        assert torch.allclose(inside, data.colours[int(s["colour"])][:, None].expand_as(inside))


def test_index_out_of_range():
    with pytest.raises(IndexError, match="index 5 out of range for 5 samples"):
        ProceduralVideos(ProceduralConfig(), 5)[5]
