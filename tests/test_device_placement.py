"""No tensor of a training step is made on the wrong device: every phase (as the trainer builds and chains
them), the samples it writes and pose-sample's generation run on an emulated accelerator (fake tensors on
the ``meta`` device, tests/emulated_device.py) that fails on a CPU tensor meeting a device one as CUDA does,
for both families and every conditioning, at TP=1, TP=2 with sequence parallelism and CP=2. Two spoiled runs
(the first GPU run's LoRA half left on the CPU; timesteps made without a device) must fail, so the emulation
is known to catch what a GPU would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.cpu_only  # the emulation stands in for CUDA: on a GPU machine the real thing runs
MISMATCH = "Expected all tensors to be on the same device"


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, str]:
    out = tmp_path_factory.mktemp("devices") / "outcomes.json"
    # A fresh process: the layouts run on a fake process group, which needs torch.distributed uninitialised.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TRITON_INTERPRET": "0"}
    proc = subprocess.run([sys.executable, str(ROOT / "tests" / "dist" / "device_placement.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def test_every_step_stays_on_the_device(outcomes):
    runs = {k: v for k, v in outcomes.items() if not k.startswith("control/")}
    # 6 presets at TP=1 (phases, sample), 2 of them with a trained backbone and conv head, 2 presets x 3 at TP=2
    # and CP=2
    assert len(runs) == 6 * 2 + 2 + 2 * (2 * 3), sorted(runs)
    failed = {k: v for k, v in runs.items() if v != "ok"}
    assert not failed, "\n\n".join(f"{k}: {v}" for k, v in failed.items())


@pytest.mark.parametrize("control", ["lora-left-on-cpu", "cpu-timesteps"])
def test_the_emulation_catches_a_tensor_on_the_cpu(outcomes, control):
    assert MISMATCH in outcomes[f"control/{control}"], outcomes[f"control/{control}"]
