"""Activation checkpointing gives the same gradients as storing activations: whole blocks (``full``, megatron-core's
``uniform`` and ``block`` methods) and ``selective`` recompute of the attention kernel (``core_attn``) and the
feed-forward blocks (``mlp``), for every family; selective recompute keeps fewer saved bytes."""

from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, assert_grads_close
from devices import to_device
from hunyuan15_reference import hunyuan15_inputs
from hunyuan_reference import hunyuan_inputs
from wan_reference import wan_inputs

from pose_mcore.config.base import ConfigError
from pose_mcore.config.wan import wan_config
from pose_mcore.evaluation.timing import saved_activation_bytes
from pose_mcore.models.registry import family_of_preset
from pose_mcore.models.wan import WanModel
from pose_mcore.parallel.sharding import full_state_dict, load_full_state_dict


def _grads_equal(plain: torch.nn.Module, other: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    load_full_state_dict(other, full_state_dict(plain))
    for model in (plain, other):
        model(**inputs).sample.square().mean().backward()
    grads = [{n: p.grad for n, p in m.named_parameters() if p.grad is not None} for m in (other, plain)]
    assert len(grads[1]) > 0.9 * len(list(plain.parameters()))  # (the last block's text-only parts get none)
    assert_grads_close(*grads, 1e-6)


@pytest.mark.parametrize("method", ["uniform", "block"])
def test_recompute_same_gradients(tp1, method):
    torch.manual_seed(0)
    plain = WanModel(wan_config("tiny-i2v")).to(DEVICE)
    recompute = WanModel(wan_config("tiny-i2v", recompute_granularity="full", recompute_method=method,
                                    recompute_num_layers=1)).to(DEVICE)
    _grads_equal(plain, recompute, to_device(wan_inputs(True, 2, 3, 4, 4, seed=2)))
    assert recompute.config.recompute_block(0) and (method == "uniform") == recompute.config.recompute_block(1)


SELECTIVE = {  # preset -> inputs
    "tiny-i2v": lambda: wan_inputs(True, 2, 3, 4, 4, seed=2),
    "tiny-hunyuan-i2v": lambda: hunyuan_inputs("i2v_concat", 2, 3, 4, 4, [4, 2], seed=2),
    "tiny-hunyuan1.5-i2v": lambda: hunyuan15_inputs("i2v", 2, 3, 4, 4, [4, 2], [2, 0], seed=2),
}


@pytest.mark.parametrize("preset", list(SELECTIVE))
@pytest.mark.parametrize("modules", [["core_attn"], ["mlp"], ["core_attn", "mlp"]])
def test_selective_recompute_same_gradients_fewer_saved_bytes(tp1, preset, modules):
    family = family_of_preset(preset)
    torch.manual_seed(0)
    plain = family.build(family.make_config(preset)).to(DEVICE)
    selective = family.build(family.make_config(preset, recompute_granularity="selective",
                                                recompute_modules=modules)).to(DEVICE)
    inputs = to_device(SELECTIVE[preset]())
    assert not any(selective.config.recompute_block(i) for i in range(selective.config.num_layers))
    saved = {name: saved_activation_bytes(m, inputs, None) for name, m in (("plain", plain), ("selective", selective))}
    assert saved["selective"] < saved["plain"], saved
    _grads_equal(plain, selective, inputs)


def test_selective_recompute_of_what_is_not_built_is_refused():
    with pytest.raises(ConfigError, match=r"\['layernorm'\] cannot be recomputed on their own"):
        wan_config("tiny-t2v", recompute_granularity="selective", recompute_modules=["mlp", "layernorm"])
