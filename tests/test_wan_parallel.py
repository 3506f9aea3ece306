"""TP=2 with sequence parallelism off and on equals TP=1: outputs, input gradients and every
parameter gradient (gathered to whole tensors), including an odd token count, per-token
timesteps and activation checkpointing. Runs tests/dist/wan_tp.py under torchrun (gloo)."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close_rel, torchrun

REL = 1e-5


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("wan_tp") / "results.pt"
    torchrun("wan_tp.py", "--out", str(out))
    return torch.load(out)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["t2v_odd_tokens", "i2v", "t2v_per_token_t_recompute"])
@pytest.mark.parametrize("layout", ["tp2_sp0", "tp2_sp1"])
def test_tp2_matches_tp1(results, case, layout):
    reference, parallel = results[case]["tp1"], results[case][layout]
    assert set(parallel) == set(reference)
    assert sum(k.startswith("grad.") for k in reference) > 30
    for name, expected in reference.items():
        assert_close_rel(parallel[name], expected, REL, f"{case}/{layout}/{name}")
