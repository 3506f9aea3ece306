"""TP=2 with sequence parallelism off and on equals TP=1 for Wan, HunyuanVideo and HunyuanVideo-1.5 (T2V, I2V,
mean-flow; masked LLM and glyph text): outputs, input
gradients and every parameter gradient (gathered to whole tensors), with odd token counts, masked
text, per-token timesteps, both Hunyuan I2V modes (token replacement across shards too) and
activation checkpointing, and with a LoRA on every parallel linear (HunyuanVideo's fused single-stream
ones too, which the adapter must cut group by group like the weights). A model built from a seed is the same
whole model at TP=2 as at TP=1 (HunyuanVideo's fused linears and their adapter are drawn whole and cut group by
group). Runs tests/dist/model_tp.py under torchrun (gloo)."""

from __future__ import annotations

import pytest
from conftest import assert_layout_matches, torchrun_results

CASES = ["wan_t2v_odd_tokens", "wan_i2v", "wan_t2v_per_token_t_recompute", "hunyuan_t2v_odd_tokens",
         "hunyuan_i2v_concat", "hunyuan_i2v_replace_recompute", "hunyuan_i2v_replace_first_frame_split",
         "hunyuan15_t2v_odd_tokens", "hunyuan15_i2v_recompute", "hunyuan15_meanflow",
         "hunyuan15_i2v_selective_recompute", "wan_t2v_lora",
         "hunyuan_t2v_lora", "hunyuan15_i2v_lora"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    return torchrun_results(tmp_path_factory, "model_tp.py")


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("layout", ["tp2_sp0", "tp2_sp1"])
def test_tp2_matches_tp1(results, case, layout):
    assert results[case].pop(f"{layout}.built_unlike_tp1") == []
    assert_layout_matches(results[case]["ref"], results[case][layout], f"{case}/{layout}")
