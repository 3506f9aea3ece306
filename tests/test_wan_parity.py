"""The Wan DiT against diffusers' WanTransformer3DModel with the same random weights (fp32)."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, assert_close_rel, assert_grads_close
from devices import seeded_randn, to_device
from wan_reference import diffusers_wan, wan_inputs

from pose_mcore.checkpoint.layouts.wan import wan_from_diffusers, wan_to_diffusers
from pose_mcore.config.wan import wan_config
from pose_mcore.models.wan import WanModel
from pose_mcore.parallel.sharding import load_full_state_dict

REL = 1e-5


def _pose_twin(reference, i2v: bool) -> WanModel:
    model = WanModel(wan_config("tiny-i2v" if i2v else "tiny-t2v")).to(DEVICE)
    load_full_state_dict(model, wan_from_diffusers(reference.state_dict()))
    return model


def _forward_backward(model, inputs):
    inputs = {k: v.clone().requires_grad_(k != "timestep") for k, v in inputs.items()}
    out = model(**inputs).sample
    weight = seeded_randn(out.shape, 9, out.device)
    (out * weight).sum().backward()
    return out.detach(), {k: v.grad for k, v in inputs.items() if v.grad is not None}


@pytest.mark.parametrize("i2v", [False, True], ids=["t2v", "i2v"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 6), (3, 2, 6, 4), (1, 5, 2, 8)], ids=lambda s: "x".join(map(str, s)))
def test_matches_diffusers(tp1, threads, i2v, shape):
    reference = diffusers_wan(i2v).to(DEVICE)
    model = _pose_twin(reference, i2v)
    inputs = to_device(wan_inputs(i2v, *shape, seed=sum(shape)))
    out_ref, grads_ref = _forward_backward(reference, inputs)
    out, grads = _forward_backward(model, inputs)
    assert out_ref.abs().max() > 0.1
    assert_close_rel(out, out_ref, REL, "output")
    assert set(grads) == set(grads_ref) == ({"hidden_states", "encoder_hidden_states"}
                                            | ({"encoder_hidden_states_image"} if i2v else set()))
    for name in grads_ref:
        assert_close_rel(grads[name], grads_ref[name], REL, f"d/d {name}")
    ref_param_grads = {k: p.grad for k, p in reference.named_parameters() if p.grad is not None}
    assert_grads_close(wan_to_diffusers({k: p.grad for k, p in model.named_parameters()}), ref_param_grads, REL)


def test_per_token_timesteps_match_diffusers(tp1):
    """Wan2.2 TI2V passes one timestep per video token."""
    reference = diffusers_wan(False).to(DEVICE)
    model = _pose_twin(reference, False)
    inputs = to_device(wan_inputs(False, 2, 3, 4, 6, seed=1, per_token_timestep=True))
    out_ref, grads_ref = _forward_backward(reference, inputs)
    out, grads = _forward_backward(model, inputs)
    assert_close_rel(out, out_ref, REL, "output")
    assert_close_rel(grads["hidden_states"], grads_ref["hidden_states"], REL, "d/d hidden_states")


def test_return_dict_false_and_key_map_round_trip(tp1):
    reference = diffusers_wan(True)
    model = _pose_twin(reference, True)
    inputs = to_device(wan_inputs(True, 1, 2, 4, 4))
    with torch.no_grad():
        (out,) = model(**inputs, return_dict=False)
        assert torch.equal(out, model(**inputs).sample)
    keys = set(reference.state_dict())
    assert set(wan_to_diffusers(wan_from_diffusers(reference.state_dict()))) == keys
