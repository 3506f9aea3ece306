"""Every phase step runs under bf16 autocast, as training on a GPU does (fp32 weights, bf16 matmuls): the
dtypes meet (LoRA, heads, kernels, losses in fp32) and the updates are finite. On a machine without CUDA
the step runs under CPU autocast, with megatron-core's linear backward made to re-enter autocast as its
``custom_bwd`` does on CUDA (megatron-core supports autocast on CUDA only; pose-train refuses
precision=bf16 on the CPU)."""

from __future__ import annotations

import math

import pytest
import torch
from phase_fixtures import batch_for, phase1_setup, phase2_setup

from pose_mcore.parallel.cpu_compat import cpu_autocast_backward


@pytest.fixture
def autocast_backward():
    with cpu_autocast_backward():
        yield


@pytest.mark.parametrize("preset", ["tiny-t2v", "tiny-i2v"])
@pytest.mark.parametrize("head", ["semantic", "conv"])
def test_phase_steps_under_bf16_autocast(tp1, autocast_backward, preset, head):
    roles, phase1, cfg = phase1_setup(preset)
    phase1.bf16 = True
    batch = batch_for(cfg)
    out1 = phase1.step([batch])
    phase2 = phase2_setup(roles, cfg, head=head)
    phase2.bf16 = True
    out2 = phase2.step([batch])
    for name, value in {**out1, **out2}.items():
        assert math.isfinite(value), name
    assert out1["stepped"] == out2["stepped"] == 1.0
    assert all(p.dtype == torch.float32 for p in roles.parameters())  # autocast keeps fp32 weights
