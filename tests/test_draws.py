"""Random draws belong to samples: a sample's noise, times and seeds are the same whichever micro-batch or
rank it is drawn in, and differ between samples, steps, sub-steps and successive draws."""

from __future__ import annotations

import torch

from pose_mcore.pose.draws import SampleDraws

CPU = torch.device("cpu")


def _draw(index: list[int], step: int = 0, tag: str = "g") -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    d = SampleDraws(7, step, tag, torch.tensor(index), CPU)
    return d.noise(torch.zeros(len(index), 2, 3)), d.times(0.2, 0.9, 3.0), d.seeds()


def test_a_sample_draws_the_same_numbers_in_any_micro_batch():
    noise, times, seeds = _draw([0, 1, 2, 3])
    for part in ([0, 1], [2, 3], [3]):
        n, t, s = _draw(part)
        assert torch.equal(n, noise[part]) and torch.equal(t, times[part]) and s == [seeds[i] for i in part]


def test_draws_differ_between_samples_steps_substeps_and_draws():
    noise, times, _ = _draw([0, 1])
    assert not torch.equal(noise[0], noise[1])
    assert not torch.equal(_draw([0, 1], step=1)[0], noise)
    assert not torch.equal(_draw([0, 1], tag="d")[0], noise)
    d = SampleDraws(7, 0, "g", torch.tensor([0]), CPU)
    assert not torch.equal(d.noise(torch.zeros(1, 4)), d.noise(torch.zeros(1, 4)))


def test_times_are_shifted_uniforms_in_range():
    t = SampleDraws(1, 0, "t", torch.arange(2000), CPU).times(0.7, 1.0, 1.0)
    assert t.min() >= 0.7 and t.max() <= 1.0 and abs(t.mean().item() - 0.85) < 0.01
    shifted = SampleDraws(1, 0, "t", torch.arange(2000), CPU).times(0.0, 1.0, 5.0)
    assert abs(shifted.median().item() - 5 * 0.5 / (1 + 4 * 0.5)) < 0.02  # the shift maps the median 0.5 to 5/6
