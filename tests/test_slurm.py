"""examples/slurm/*.sbatch under a fake SLURM: ``srun`` runs the job step once per node (2 nodes) with SLURM's
per-node variables, ``scontrol`` answers ``show hostnames`` and records ``requeue``, and a fake Python records the
torchrun command line each node's launcher builds (no torch, no ranks). What runs for real is the sbatch script
and examples/pretrain_pose.sh."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SRUN = r"""#!/usr/bin/env bash
# fake srun: the step on each of the 2 nodes, concurrently; forwards USR1/TERM to them; exits with the largest status
while [[ "$1" == --* ]]; do shift; done
echo "srun $*" >> "$STUB_LOG"
pids=()
for node in 0 1; do SLURM_NODEID=$node SLURM_LOCALID=0 "$@" & pids+=($!); done
trap 'echo "srun got USR1" >> "$STUB_LOG"; kill -USR1 "${pids[@]}"' USR1
trap 'echo "srun got TERM" >> "$STUB_LOG"; kill -TERM "${pids[@]}"' TERM
status=0
for pid in "${pids[@]}"; do
  while true; do wait "$pid"; s=$?; kill -0 "$pid" 2>/dev/null || break; done
  (( s > status )) && status=$s
done
exit $status
"""
SCONTROL = r"""#!/usr/bin/env bash
echo "scontrol $*" >> "$STUB_LOG"
[[ "$1 $2" == "show hostnames" ]] && printf 'gpu-node-7\ngpu-node-8\n'
exit 0
"""
PYTHON = r"""#!/usr/bin/env bash
# fake python: the CUDA probe says no GPU, --validate passes, torchrun is recorded and 'runs' for FAKE_SECONDS;
# with FAKE_STOP (or a USR1/TERM forwarded to its rank, the launcher's pkill -P) rank 0 reports a stop
[[ "$1" == "-c" ]] && exit 1
[[ "$*" == *"--validate"* ]] && exit 0
if [[ "$1 $2" == "-m torch.distributed.run" ]]; then
  echo "node ${SLURM_NODEID}: torchrun ${*:3}" >> "$STUB_LOG"
  ( trap 'echo "stopped by the signal" > "$POSE_STOP_FILE"; exit 75' USR1 TERM
    for _ in $(seq "${FAKE_SECONDS:-0}"); do sleep 0.2; done
    [[ -n "${FAKE_STOP:-}" ]] && { echo "stopped at phase2 step 1" > "$POSE_STOP_FILE"; exit 75; }
    exit 0 ) &
  wait $!; s=$?; while kill -0 $! 2>/dev/null; do wait $!; s=$?; done
  exit $(( s == 0 ? 0 : 1 ))  # torchrun reports a failed rank as 1
fi
exit 0
"""


def _stubs(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL), ("python", PYTHON)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RANK", "LOCAL_RANK", "WORLD_SIZE"))}
    return {**env, "PATH": f"{bin_dir}:{env['PATH']}", "PYTHON": str(bin_dir / "python"), "STUB_LOG": str(tmp_path / "log"),
            "SLURM_JOB_ID": "4242", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu-node-[7-8]",
            "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_RESTART_COUNT": "1"}


def _sbatch(env: dict[str, str], script: str = "pretrain_pose.sbatch", args: tuple[str, ...] = (
        "--config", "wan2.1-i2v-14b", "model_dir=/data/wan"), **extra: str) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(ROOT / "examples" / "slurm" / script), *args], env={**env, **extra},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_nodes_render_one_torchrun_each(tmp_path):
    env = _stubs(tmp_path)
    proc = _sbatch(env)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "pose: job 4242 (restart 1) on 2 nodes x 8 ranks, master gpu-node-7" in out
    log = (tmp_path / "log").read_text().splitlines()
    want = (f"torchrun --nnodes 2 --rdzv-backend c10d --rdzv-id 4242 --rdzv-endpoint gpu-node-7:29500 "
            f"--nproc-per-node 8 --no-python {ROOT}/examples/pretrain_pose.sh --resume --config wan2.1-i2v-14b "
            "model_dir=/data/wan")
    assert sorted(line for line in log if "torchrun" in line) == [f"node 0: {want}", f"node 1: {want}"]
    assert not any("requeue" in line for line in log)


def test_a_stopped_run_is_requeued(tmp_path):
    env = _stubs(tmp_path)
    proc = _sbatch(env, FAKE_STOP="1")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    assert "pretrain_pose.sh: stopped at phase2 step 1" in err
    assert "pose: stopped at a checkpoint; requeueing job 4242 to resume" in out
    assert "scontrol requeue 4242" in (tmp_path / "log").read_text()


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_the_schedulers_signal_reaches_the_ranks_and_requeues(tmp_path, sig):
    env = _stubs(tmp_path)
    proc = _sbatch(env, FAKE_SECONDS="100")
    log = tmp_path / "log"
    deadline = time.monotonic() + 30
    while (not log.is_file() or log.read_text().count("torchrun") < 2) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # the launchers' traps are set right after torchrun starts
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    assert f"srun got {sig.name.removeprefix('SIG')}" in log.read_text()
    assert err.count(f"pretrain_pose.sh: {sig.name.removeprefix('SIG')} received: asking the ranks") == 2
    assert "pretrain_pose.sh: stopped by the signal" in err and "scontrol requeue 4242" in log.read_text()


@pytest.mark.parametrize(("script", "want"), [
    ("pose_prepare.sbatch", "torchrun --nnodes 2 --rdzv-backend c10d --rdzv-id 4242 --rdzv-endpoint gpu-node-7:29500 "
                            "--nproc-per-node 8 -m pose_mcore.data.prepare --out /data/x --frames 81"),
    ("pose_sample.sbatch", "torchrun --standalone --nproc-per-node 8 -m pose_mcore.inference.sample --out /data/x "
                           "--frames 81 --shard {node}/2"),
])
def test_prepare_and_sample_share_the_work_over_nodes(tmp_path, script, want):
    env = _stubs(tmp_path)
    proc = _sbatch(env, script, ("--out", "/data/x", "--frames", "81"))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    log = [line for line in (tmp_path / "log").read_text().splitlines() if "torchrun" in line]
    assert sorted(log) == [f"node {n}: {want.format(node=n)}" for n in (0, 1)]
