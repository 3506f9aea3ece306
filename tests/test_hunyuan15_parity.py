"""The HunyuanVideo-1.5 DiT against diffusers' HunyuanVideo15Transformer3DModel with the same random weights
(fp32): T2V, I2V and the mean-flow variant, masks that hide LLM and glyph tokens (a prompt without quoted
text has none), several shapes, batch > 1, outputs and every gradient; the official key names."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, assert_close_rel, assert_grads_close
from devices import seeded_randn, to_device
from hunyuan15_reference import VARIANTS, diffusers_hunyuan15, hunyuan15_inputs

from pose_mcore.checkpoint.layouts.hunyuan15 import ORIGINAL, hunyuan15_from_diffusers, hunyuan15_to_diffusers
from pose_mcore.checkpoint.layouts.rules import apply_rules, invert
from pose_mcore.config.hunyuan15 import hunyuan15_config
from pose_mcore.models.hunyuan15 import HunyuanVideo15Model
from pose_mcore.parallel.sharding import load_full_state_dict

REL = 1e-5
SHAPES = {  # (batch, frames, height, width, valid LLM tokens, valid glyph tokens per sample)
    "2x3x4x6": (2, 3, 4, 6, [5, 2], [3, 0]),
    "3x2x6x4": (3, 2, 6, 4, [1, 4, 3], [2, 2, 1]),
    "1x5x2x8": (1, 5, 2, 8, [3], [0]),
}
NOT_DIFFERENTIATED = ("timestep", "timestep_r")


def _forward_backward(model, inputs):
    inputs = {k: v.clone().requires_grad_(v.is_floating_point() and k not in NOT_DIFFERENTIATED)
              for k, v in inputs.items()}
    out = model(**inputs).sample
    weight = seeded_randn(out.shape, 9, out.device)
    (out * weight).sum().backward()
    return out.detach(), {k: v.grad for k, v in inputs.items() if v.grad is not None}


def _model(variant: str):
    reference = diffusers_hunyuan15(variant).to(DEVICE)
    model = HunyuanVideo15Model(hunyuan15_config(VARIANTS[variant][1])).to(DEVICE)
    load_full_state_dict(model, hunyuan15_from_diffusers(reference.state_dict()))
    return reference, model


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("shape", list(SHAPES))
def test_matches_diffusers(tp1, threads, variant, shape):
    reference, model = _model(variant)
    b, f, h, w, lengths, glyph_lengths = SHAPES[shape]
    inputs = to_device(hunyuan15_inputs(variant, b, f, h, w, lengths, glyph_lengths, seed=f * h))
    out_ref, grads_ref = _forward_backward(reference, inputs)
    out, grads = _forward_backward(model, inputs)
    assert out_ref.abs().max() > 0.1
    assert_close_rel(out, out_ref, REL, "output")
    if variant == "t2v":  # the zero image tokens are masked out: diffusers' gradient for them is zero
        assert not grads_ref.pop("image_embeds").any()
    assert set(grads) == set(grads_ref)
    for name in grads_ref:
        assert_close_rel(grads[name], grads_ref[name], REL, f"d/d {name}")
    for tokens, mask in (("encoder_hidden_states", "encoder_attention_mask"),
                         ("encoder_hidden_states_2", "encoder_attention_mask_2")):
        assert not grads[tokens][inputs[mask] == 0].any(), f"hidden {tokens} got a gradient"
    ref_param_grads = {k: p.grad if p.grad is not None else torch.zeros_like(p)
                       for k, p in reference.named_parameters()}
    param_grads = {k: p.grad if p.grad is not None else torch.zeros_like(p) for k, p in model.named_parameters()}
    if variant == "t2v":  # T2V leaves the image projection and its source embedding unused in both models
        assert all(not g.any() for k, g in ref_param_grads.items() if k.startswith("image_embedder."))
        assert not ref_param_grads["cond_type_embed.weight"][2].any()
    assert_grads_close(hunyuan15_to_diffusers(param_grads), ref_param_grads, REL)


@pytest.mark.parametrize("field", ["encoder_attention_mask", "encoder_attention_mask_2", "image_embeds",
                                   "timestep_r"])
def test_each_condition_changes_the_output(tp1, field):
    """The masks, the image tokens and the mean-flow timestep are read: changing one changes the prediction."""
    _, model = _model("meanflow")
    inputs = to_device(hunyuan15_inputs("meanflow", 1, 2, 4, 4, [4], [3]))
    with torch.no_grad():
        full = model(**inputs).sample
        if field.startswith("encoder_attention_mask"):
            inputs[field][0, 2] = 0
        else:  # (the image projection starts with a LayerNorm: a scale would not show)
            inputs[field] = inputs[field] + seeded_randn(inputs[field].shape, 4, inputs[field].device)
        assert (model(**inputs).sample - full).abs().max() > 1e-4


def test_refuses_missing_streams(tp1):
    _, model = _model("t2v")
    inputs = to_device(hunyuan15_inputs("t2v", 1, 2, 4, 4, [4], [3]))
    with pytest.raises(ValueError, match="glyph"):
        model(**{k: v for k, v in inputs.items() if k != "encoder_hidden_states_2"})
    with pytest.raises(ValueError, match="use_meanflow"):
        model(**inputs, timestep_r=inputs["timestep"])


def test_layouts_round_trip_and_official_names(tp1):
    """diffusers -> pose_mcore -> diffusers and official -> pose_mcore -> official are bit exact; the official
    names are those diffusers' convert_hunyuan_video1_5_to_diffusers.py reads (final AdaLN halves swapped)."""
    state = diffusers_hunyuan15("meanflow").state_dict()
    ours = hunyuan15_from_diffusers(state)
    back = hunyuan15_to_diffusers(ours)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    official = apply_rules(invert(ORIGINAL), ours)
    again = apply_rules(ORIGINAL, official)
    assert set(again) == set(ours) and all(torch.equal(again[k], ours[k]) for k in ours)
    expected = {  # official name -> diffusers name, from the conversion script
        "img_in.proj.weight": "x_embedder.proj.weight",
        "time_in.mlp.2.bias": "time_embed.timestep_embedder.linear_2.bias",
        "time_r_in.mlp.0.weight": "time_embed.timestep_embedder_r.linear_1.weight",
        "txt_in.individual_token_refiner.blocks.0.adaLN_modulation.1.weight":
            "context_embedder.token_refiner.refiner_blocks.0.norm_out.linear.weight",
        "byt5_in.layernorm.weight": "context_embedder_2.norm.weight",
        "byt5_in.fc3.bias": "context_embedder_2.linear_3.bias",
        "vision_in.proj.0.bias": "image_embedder.norm_in.bias",
        "vision_in.proj.3.weight": "image_embedder.linear_2.weight",
        "vision_in.proj.4.weight": "image_embedder.norm_out.weight",
        "cond_type_embedding.weight": "cond_type_embed.weight",
        "double_blocks.1.img_attn_k.weight": "transformer_blocks.1.attn.to_k.weight",
        "double_blocks.1.txt_attn_v.bias": "transformer_blocks.1.attn.add_v_proj.bias",
        "double_blocks.0.txt_attn_k_norm.weight": "transformer_blocks.0.attn.norm_added_k.weight",
        "double_blocks.0.txt_mlp.fc2.weight": "transformer_blocks.0.ff_context.net.2.weight",
        "final_layer.linear.weight": "proj_out.weight",
    }
    for name, diffusers_name in expected.items():
        assert torch.equal(official[name], state[diffusers_name]), name
    qkv = official["txt_in.individual_token_refiner.blocks.0.self_attn_qkv.weight"]
    refiner = "context_embedder.token_refiner.refiner_blocks.0.attn."
    assert torch.equal(qkv, torch.cat([state[refiner + f"to_{x}.weight"] for x in "qkv"]))
    shift, scale = official["final_layer.adaLN_modulation.1.weight"].chunk(2)
    assert torch.equal(torch.cat([scale, shift]), state["norm_out.linear.weight"])
    assert len(official) == len(state) - 4  # the one refiner block's q, k, v weights and biases fused
    with pytest.raises(KeyError, match="double_blocks.0.mystery.weight"):
        apply_rules(ORIGINAL, {**official, "double_blocks.0.mystery.weight": torch.zeros(1)})


def test_pose_refuses_the_mean_flow_variant():
    from pose_mcore.pose.conditioning import Conditioner

    with pytest.raises(ValueError, match="use_meanflow=True"):
        Conditioner(hunyuan15_config("tiny-hunyuan1.5-meanflow"), stand_ins=True)
