"""The launcher: `bash examples/pretrain_pose.sh` starts torchrun, which re-enters the script on each
rank (`--no-python`), which then execs the entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_launcher_runs_two_ranks_with_tp_and_sp():
    env = dict(os.environ, PYTHON=sys.executable, NPROC="2")
    env.pop("LOCAL_RANK", None)
    env.pop("TORCHELASTIC_RUN_ID", None)
    proc = subprocess.run(["bash", str(ROOT / "examples" / "pretrain_pose.sh"), "--steps", "2", "--preset",
                           "tiny-hunyuan-i2v-token-replace",
                           "--recompute"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "TP=2, sequence parallel=True" in proc.stdout
    assert "step 2/2 loss" in proc.stdout


def test_cli_rejects_unknown_preset():
    proc = subprocess.run([sys.executable, "-m", "pose_mcore.cli", "--preset", "nope"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2 and "invalid choice: 'nope'" in proc.stderr
