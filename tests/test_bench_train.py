"""The training benchmark runs under torchrun (2 ranks, DP=2) and prints both engines and their ratio for a
phase, and with --predict the memory model's prediction of the step beside it (what it measures is not
asserted: timings belong to benchmarks, not tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import rank_env

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_train_runs_both_engines(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(ROOT / "tools" / "bench_train.py"), "--config", "tiny-cpu", "--steps", "1", "--phase", "phase1", "--predict",
           "tensor_parallel=1", "micro_batch_size=2", "global_batch_size=8", "data.size=16", "phase1.fake_updates=1",
           f"output_dir={tmp_path / 'run'}"]
    proc = subprocess.run(cmd, env=rank_env(2, OMP_NUM_THREADS="1", TRITON_INTERPRET="0"), capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = proc.stdout
    assert "TP=1 x CP=1 x DP=2, micro-batch 2 x 2 accumulation x 2 = global batch 8" in out, out
    lines = {line.split()[1]: line.split() for line in out.splitlines() if line.startswith("phase1 ")}
    assert set(lines) == {"baseline", "config", "ratio", "predicted"}, out
    assert float(lines["predicted"][3]) > 0, out  # the step's GiB (nothing measured without CUDA)
    assert float(lines["config"][4]) > 0 and float(lines["ratio"][4]) <= 1.0, out  # sharded states are no larger
