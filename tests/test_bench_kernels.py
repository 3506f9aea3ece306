"""The kernel benchmark runs and prints its side-by-side table (what it measures is not asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
