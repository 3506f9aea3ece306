"""Shared fixtures: a TP=1 parallel state in the test process, and a torchrun launcher for multi-rank tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

# Without a GPU the Triton kernels run under Triton's interpreter; it must be chosen before they are defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

KERNEL_BACKEND = "triton" if torch.cuda.is_available() else "interpret"
"""The kernel backend of this machine; tests run it and the torch reference."""


@pytest.fixture(scope="session")
def tp1():
    """megatron-core parallel state with TP=1 on a single-rank gloo group."""
    from pose_mcore.parallel.state import initialize_parallel

    return initialize_parallel(1)


def torchrun(script: str, *args: str, nproc: int = 2, timeout: int = 300) -> None:
    """Run ``tests/dist/<script>`` under torchrun with ``nproc`` CPU ranks; fail with its output if it fails."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(TESTS / "dist" / script), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited with {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")


def torchrun_results(tmp_path_factory, script: str, *args: str) -> dict:
    """Run ``tests/dist/<script> --out FILE *args`` under torchrun and load what it saved."""
    out = tmp_path_factory.mktemp(Path(script).stem) / "results.pt"
    torchrun(script, "--out", str(out), *args)
    return torch.load(out)


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float, name: str = "",
                     floor: float = 1e-6) -> None:
    """max |actual - expected| <= rel * max(max |expected|, floor): a relative tolerance on the tensor's
    scale. The floor covers tensors that are zero up to rounding (the gradient of a key bias, which
    softmax ignores, is ~1e-12): they are held to an absolute ``rel * floor``."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = expected.abs().max().clamp_min(floor)
    err = ((actual - expected).abs().max() / scale).item()
    assert err <= rel, f"{name}: max relative error {err:.3g} > {rel:g}"
