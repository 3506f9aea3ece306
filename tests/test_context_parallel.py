"""Context parallelism (Ulysses) equals CP=1 for Wan, HunyuanVideo and HunyuanVideo-1.5: CP=2, CP=4 and CP=2 x TP=2 (sequence
parallelism) against CP=1 TP=1 on 4 gloo ranks: outputs, input gradients and every parameter
gradient (summed over the CP ranks as DDP does), with odd token counts (padding on some CP ranks), masked
text, per-token timesteps, both Hunyuan I2V modes (the token-replaced first frame on one CP rank only) and
activation checkpointing. Runs tests/dist/model_cp.py under torchrun."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_layout_matches, torchrun

CASES = ["wan_t2v_odd_tokens", "wan_i2v", "wan_t2v_per_token_t_recompute", "hunyuan_t2v_odd_tokens",
         "hunyuan_i2v_concat", "hunyuan_i2v_replace_recompute", "hunyuan_i2v_replace_first_frame_split",
         "hunyuan15_t2v_odd_tokens", "hunyuan15_i2v_recompute", "hunyuan15_meanflow",
         "hunyuan15_i2v_selective_recompute"]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("model_cp") / "results.pt"
    torchrun("model_cp.py", "--out", str(out), nproc=4, timeout=600)
    return torch.load(out)


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("layout", ["cp2", "cp4", "cp2_tp2_sp"])
def test_cp_matches_cp1(results, case, layout):
    assert results[case].pop(f"{layout}.built_unlike_tp1") == []  # one seed, one model, at any layout
    assert_layout_matches(results[case]["ref"], results[case][layout], f"{case}/{layout}")
