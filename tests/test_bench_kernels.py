"""The kernel benchmark runs and prints its side-by-side table (what it measures is not asserted)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_bench_kernels_quick_runs():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_kernels.py"), "--quick", "--reps", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for op in ("logit-query attention", "st_r1_perturb", "st_r1_penalty"):
        assert op in proc.stdout
    assert "reference is" in proc.stdout and "x sdpa" in proc.stdout
    if not torch.cuda.is_available():
        assert "the Triton kernel timings need a GPU" in proc.stdout


def test_failing_case_is_reported_in_its_row_and_the_sweep_goes_on(capsys):
    spec = importlib.util.spec_from_file_location("bench_kernels", ROOT / "tools" / "bench_kernels.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_kernels"] = bench  # dataclasses look their module up
    spec.loader.exec_module(bench)

    def fails():
        raise RuntimeError("Triton Error [CUDA]: invalid argument")

    table = bench.Table(peak=None)
    table.add(bench.measure("st_r1_penalty", "huge", "triton", fails, None, 1.0, cuda=False, reps=1))
    table.add(bench.measure("st_r1_penalty", "small", "reference", lambda: torch.zeros(3).sum(), None, 1e-9,
                            cuda=False, reps=1))
    lines = capsys.readouterr().out.splitlines()
    assert "huge" in lines[2] and "FAILED: RuntimeError: Triton Error [CUDA]: invalid argument" in lines[2]
    assert "small" in lines[3] and "FAILED" not in lines[3]
    assert [r.error is None for r in table.rows] == [False, True]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_gpu_check_without_a_gpu_says_so():
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHON": sys.executable})
    assert proc.returncode == 1
    assert "no CUDA device is visible" in proc.stderr and "Traceback" not in proc.stderr
