"""HunyuanVideo configurations that cannot work fail at build time, naming the value and the rule."""

from __future__ import annotations

import pytest
import torch

from pose_mcore.config.hunyuan import HUNYUAN_PRESETS, hunyuan_config
from pose_mcore.models.hunyuan import HunyuanModel


@pytest.mark.parametrize("preset", [p for p in HUNYUAN_PRESETS if not p.startswith("tiny")])
def test_real_presets(preset):
    cfg = hunyuan_config(preset, tensor_model_parallel_size=8, sequence_parallel=True)
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_layers, cfg.num_single_layers) == (3072, 24, 20, 40)
    assert cfg.rope_axes_dim == (16, 56, 56) and cfg.head_dim == 128


@pytest.mark.parametrize("overrides, match", [
    (dict(tensor_model_parallel_size=3), r"num_attention_heads=4 must be divisible by tensor_model_parallel_size=3"),
    (dict(rope_axes_dim=(2, 2, 2)), r"rotary axes \(2, 2, 2\) must be three even positive sizes summing to the head dim 8"),
    (dict(image_condition_type="mask"), r"image_condition_type='mask' must be one of"),
    (dict(image_condition_type="token_replace", patch_size=(2, 2, 2)), r"needs a temporal patch of 1"),
    (dict(ffn_hidden_size=63, tensor_model_parallel_size=2), r"ffn_hidden_size=63 must be divisible"),
    (dict(num_refiner_layers=0), r"num_refiner_layers=0 must be a positive integer"),
])
def test_bad_config(overrides, match):
    with pytest.raises(ValueError, match=match):
        hunyuan_config("tiny-hunyuan-t2v", **overrides)


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown HunyuanConfig preset 'hunyuan-t2v-30b'"):
        hunyuan_config("hunyuan-t2v-30b")


def test_guidance_required_when_embedded(tp1):
    model = HunyuanModel(hunyuan_config("tiny-hunyuan-t2v"))
    with pytest.raises(ValueError, match="pass guidance"):
        model(torch.randn(1, 4, 1, 2, 2), torch.tensor([10.0]), torch.randn(1, 3, 16), torch.ones(1, 3),
              torch.randn(1, 8))
