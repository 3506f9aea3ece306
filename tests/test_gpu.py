"""GPU paths: flash-attn against torch SDPA, transformer-engine linears against megatron-core's local ones.
Skipped without CUDA (and without the optional package)."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import assert_close_rel
from wan_reference import wan_inputs

from pose_mcore.config.wan import wan_config
from pose_mcore.layers.attention import attention
from pose_mcore.models.wan import WanModel
from pose_mcore.parallel.sharding import full_state_dict, load_full_state_dict

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.skipif(importlib.util.find_spec("flash_attn") is None, reason="needs flash-attn")
def test_flash_attention_matches_sdpa():
    gen = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, 64, device="cuda", generator=gen, dtype=torch.bfloat16) for n in (333, 517, 517))
    assert_close_rel(attention(q, k, v, "flash").float(), attention(q, k, v, "sdpa").float(), 2e-2, "flash vs sdpa")


@pytest.mark.skipif(importlib.util.find_spec("transformer_engine") is None, reason="needs transformer-engine")
def test_transformer_engine_spec_matches_local(tp1):
    torch.manual_seed(0)
    local = WanModel(wan_config("tiny-i2v", transformer_impl="local", attn_impl="sdpa")).cuda()
    te = WanModel(wan_config("tiny-i2v", transformer_impl="transformer_engine", attn_impl="sdpa")).cuda()
    state = {k: v for k, v in full_state_dict(local).items()}
    load_full_state_dict(te, state)
    inputs = {k: v.cuda() for k, v in wan_inputs(True, 2, 3, 4, 6).items()}
    with torch.no_grad():
        assert_close_rel(te(**inputs).sample, local(**inputs).sample, 1e-3, "TE vs local")
