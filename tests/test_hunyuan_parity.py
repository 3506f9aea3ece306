"""The HunyuanVideo DiT against diffusers' HunyuanVideoTransformer3DModel with the same random weights
(fp32): T2V and both I2V modes, a text mask that hides tokens, several shapes, batch > 1."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, assert_close_rel, assert_grads_close
from devices import seeded_randn, to_device
from hunyuan_reference import VARIANTS, diffusers_hunyuan, hunyuan_inputs

from pose_mcore.checkpoint.layouts.hunyuan import hunyuan_from_diffusers, hunyuan_to_diffusers
from pose_mcore.config.hunyuan import hunyuan_config
from pose_mcore.models.hunyuan import HunyuanModel
from pose_mcore.parallel.sharding import load_full_state_dict

REL = 1e-5
SHAPES = {  # (batch, frames, height, width, valid text tokens per sample)
    "2x3x4x6": (2, 3, 4, 6, [5, 2]),
    "3x2x6x4": (3, 2, 6, 4, [1, 4, 3]),
    "1x5x2x8": (1, 5, 2, 8, [3]),
}


def _forward_backward(model, inputs):
    inputs = {k: v.clone().requires_grad_(v.is_floating_point() and k not in ("timestep", "guidance"))
              for k, v in inputs.items()}
    out = model(**inputs).sample
    weight = seeded_randn(out.shape, 9, out.device)
    (out * weight).sum().backward()
    return out.detach(), {k: v.grad for k, v in inputs.items() if v.grad is not None}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_matches_diffusers(tp1, threads, variant, shape):
    reference = diffusers_hunyuan(variant).to(DEVICE)
    model = HunyuanModel(hunyuan_config(VARIANTS[variant][1])).to(DEVICE)
    load_full_state_dict(model, hunyuan_from_diffusers(reference.state_dict()))
    b, f, h, w, lengths = SHAPES[shape]
    inputs = to_device(hunyuan_inputs(variant, b, f, h, w, lengths, seed=f * h))
    out_ref, grads_ref = _forward_backward(reference, inputs)
    out, grads = _forward_backward(model, inputs)
    assert out_ref.abs().max() > 0.1
    assert_close_rel(out, out_ref, REL, "output")
    assert set(grads) == set(grads_ref) == {"hidden_states", "encoder_hidden_states", "pooled_projections"}
    for name in grads_ref:
        assert_close_rel(grads[name], grads_ref[name], REL, f"d/d {name}")
    masked = inputs["encoder_attention_mask"] == 0  # hidden text tokens get no gradient
    assert not grads["encoder_hidden_states"][masked].any()
    ref_param_grads = {k: p.grad for k, p in reference.named_parameters()}
    assert_grads_close(hunyuan_to_diffusers({k: p.grad for k, p in model.named_parameters()}, model.config),
                       ref_param_grads, REL)


def test_text_mask_changes_the_output(tp1):
    """The mask is used: hiding one more text token changes the prediction."""
    model = HunyuanModel(hunyuan_config("tiny-hunyuan-t2v")).to(DEVICE)
    inputs = to_device(hunyuan_inputs("t2v", 1, 2, 4, 4, [4]))
    with torch.no_grad():
        full = model(**inputs).sample
        inputs["encoder_attention_mask"][0, 3] = 0
        assert not torch.allclose(model(**inputs).sample, full)


def test_layout_round_trip_is_exact(tp1):
    state = diffusers_hunyuan("i2v_replace").state_dict()
    back = hunyuan_to_diffusers(hunyuan_from_diffusers(state), hunyuan_config("tiny-hunyuan-i2v-token-replace"))
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    with pytest.raises(KeyError, match="transformer_blocks.0.attn.mystery.weight"):
        hunyuan_from_diffusers({**state, "transformer_blocks.0.attn.mystery.weight": torch.zeros(1)})
