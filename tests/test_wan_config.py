"""Configurations and inputs that cannot work fail early, naming the value and the rule."""

from __future__ import annotations

import pytest
import torch

from pose_mcore.config.wan import WAN_PRESETS, wan_config
from pose_mcore.models.wan import WanModel


@pytest.mark.parametrize("preset", [p for p in WAN_PRESETS if not p.startswith("tiny")])
def test_real_presets_build_configs(preset):
    cfg = wan_config(preset, tensor_model_parallel_size=4, sequence_parallel=True)
    assert cfg.hidden_size % cfg.num_attention_heads == 0 and sum(cfg.rope_axes_dim) == cfg.head_dim


def test_published_dims():
    assert wan_config("wan2.1-t2v-14b").rope_axes_dim == (44, 42, 42)
    i2v = wan_config("wan2.1-i2v-14b")
    assert (i2v.in_channels, i2v.image_dim, i2v.num_attention_heads) == (36, 1280, 40)
    assert wan_config("wan2.2-ti2v-5b").in_channels == 48


@pytest.mark.parametrize("overrides, match", [
    (dict(tensor_model_parallel_size=3), r"num_attention_heads=4 must be divisible by tensor_model_parallel_size=3"),
    (dict(hidden_size=50), r"hidden_size=50 must be divisible by num_attention_heads=4"),
    (dict(hidden_size=20), r"head dim 5 .* must be even"),
    (dict(patch_size=(1, 0, 2)), r"patch_size=\(1, 0, 2\) must be three positive integers"),
    (dict(in_channels=0), r"in_channels=0 must be a positive integer"),
    (dict(attn_impl="xformers"), r"attn_impl='xformers' must be one of"),
    (dict(no_such_field=1), r"unknown WanConfig field\(s\) \['no_such_field'\]"),
])
def test_bad_config(overrides, match):
    with pytest.raises(ValueError, match=match):
        wan_config("tiny-t2v", **overrides)


def test_unknown_preset_lists_known():
    with pytest.raises(ValueError, match=r"unknown WanConfig preset 'wan3'.*wan2.1-t2v-14b"):
        wan_config("wan3")


def test_model_tp_size_must_match_parallel_state(tp1):
    cfg = wan_config("tiny-t2v", tensor_model_parallel_size=2)
    with pytest.raises(ValueError, match=r"size=2 but the initialised tensor-parallel group has 1"):
        WanModel(cfg)


def test_bad_inputs_name_the_shape(tp1):
    model = WanModel(wan_config("tiny-t2v"))
    text = torch.randn(1, 3, 32)
    with pytest.raises(ValueError, match=r"shape \(1, 4, 2, 5, 4\) does not fit the patch size \(1, 2, 2\): height=5"):
        model(torch.randn(1, 4, 2, 5, 4), torch.tensor([10.0]), text)
    with pytest.raises(ValueError, match=r"must be \[batch, 4, frames, height, width\]; got shape \(1, 3, 2, 4, 4\)"):
        model(torch.randn(1, 3, 2, 4, 4), torch.tensor([10.0]), text)
    with pytest.raises(ValueError, match=r"per-token timestep has shape \(1, 5\); expected \[batch, 8\]"):
        model(torch.randn(1, 4, 2, 4, 4), torch.rand(1, 5), text)
