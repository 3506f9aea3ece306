"""Activation checkpointing per block gives the same gradients as storing activations."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, assert_grads_close
from devices import to_device
from wan_reference import wan_inputs

from pose_mcore.config.wan import wan_config
from pose_mcore.models.wan import WanModel
from pose_mcore.parallel.sharding import full_state_dict, load_full_state_dict


@pytest.mark.parametrize("method", ["uniform", "block"])
def test_recompute_same_gradients(tp1, method):
    torch.manual_seed(0)
    plain = WanModel(wan_config("tiny-i2v")).to(DEVICE)
    recompute = WanModel(wan_config("tiny-i2v", recompute_granularity="full", recompute_method=method,
                                    recompute_num_layers=1)).to(DEVICE)
    load_full_state_dict(recompute, full_state_dict(plain))
    inputs = to_device(wan_inputs(True, 2, 3, 4, 4, seed=2))
    for model in (plain, recompute):
        model(**inputs).sample.square().mean().backward()
    assert all(p.grad is not None for p in recompute.parameters())
    assert_grads_close({n: p.grad for n, p in recompute.named_parameters()},
                       {n: p.grad for n, p in plain.named_parameters()}, 1e-6)
    assert recompute.config.recompute_block(0) and (method == "uniform") == recompute.config.recompute_block(1)
