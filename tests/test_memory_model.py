"""The memory model: its fake-tensor trace of a DiT step equals the same step measured on real CPU tensors
with the same accounting (bytes of live tensor storages, by kind), for Wan I2V and HunyuanVideo, with and
without activation checkpointing; extrapolating two traced depths to the model's is within 3 % of the full
trace; the tool refuses bad input with exit status 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("memory") / "results.pt"
    # a fresh process: the trace runs on a fake process group, which needs torch.distributed uninitialised
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "dist" / "memory_trace.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return torch.load(out)


def test_trace_equals_the_measured_step(results):
    assert len(results) == 4
    for case, r in results.items():
        assert r["traced"] == r["real"], case
        assert r["real"]["params"] == r["param_bytes"], case  # every parameter is counted, once
        assert r["real"]["activations"] > 0 and r["real"]["grads"] > 0, case


def test_recompute_lowers_the_activation_peak(results):
    for family in ("wan_i2v", "hunyuan_t2v"):
        off, on = results[f"{family}/recompute=False"]["real"], results[f"{family}/recompute=True"]["real"]
        assert on["total"] < off["total"], family


def test_depth_extrapolation(results):
    for case, r in results.items():
        for kind in ("params", "total"):
            want, got = r["traced"][kind], r["extrapolated"][kind]
            assert abs(got - want) <= 0.03 * want, f"{case}/{kind}: extrapolated {got} vs traced {want}"


@pytest.mark.parametrize(("args", "message"), [
    (["--preset", "wan9-huge"], "unknown"),
    (["--preset", "wan2.1-i2v-14b", "--tp", "3"], "tensor_model_parallel_size"),
    (["--preset", "wan2.1-i2v-14b", "--video", "80x480x832"], "4k+1"),
])
def test_tool_refuses_bad_input(args, message):
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "memory_model.py"), *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
