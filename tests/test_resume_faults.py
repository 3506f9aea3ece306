"""Kill a 2-rank run (TP=2, sequence parallel) at every point a process can die, resume it with the same
command each time, and end with the generator and the trained teacher bitwise equal to an uninterrupted
run's, nothing half-written left behind; a finished run run again is a clean no-op; a kill of one rank
ends the launcher with a message instead of a hang. The faults are SIGKILLs injected with
``POSE_FAULT`` (pose_mcore/faults.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import rank_env
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ["preset=tiny-t2v", "micro_batch_size=2", "data.size=16", "data.frames=3", "data.height=8", "data.width=8",
          "teacher.steps=2", "phase1.steps=2", "phase2.steps=2", "phase1.fake_updates=1", "checkpoint_every=1",
          "log_every=1", "phase2.head_dim=16", "phase2.head_queries=2", "phase2.head_heads=2", "phase1.lora_rank=4",
          "teacher.optim.lr=1e-3", "phase1.optim_g.lr=1e-4", "phase1.optim_fake.lr=1e-3", "phase2.optim_g.lr=1e-4",
          "phase2.optim_d.lr=1e-4", "sample_every=1", "deterministic=true",  # GPU ranks: no atomics in backward
          "tensor_parallel=2", "evaluation.videos=0"]
# Global steps: teacher 1-2, Phase I 3-4, Phase II 5-6. In run order, each resumed from the previous kill:
KILLS = [
    ("step@1", None),           # inside the first step: no checkpoint yet, the resume starts afresh
    ("checkpoint@2", None),     # while the teacher's last checkpoint is being written
    ("phase_end@2", None),      # right after it, before the teacher's export and final sample
    ("write@teacher", None),    # during the export of the trained teacher
    ("phase_start@2", None),    # between the teacher phase and Phase I
    ("step@3", "1"),            # one rank only, inside a Phase I step: the other waits in a collective
    ("checkpoint@5", None),     # while a Phase II checkpoint is being written
    ("phase_end@6", None),      # after the last checkpoint of the run
    ("write@generator", None),  # during the export of the final generator
]


def _launch(out: Path, fault: str | None = None, rank: str | None = None, launcher: bool = False,
            signal: str | None = None, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """The 2-rank run of ``CONFIG`` (under torchrun, or the launcher), with a fault injected: SIGKILL, or
    ``signal``, at ``fault`` on ``rank`` (default every rank)."""
    env = rank_env(2, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHON=sys.executable, NPROC="2")
    for key in ("LOCAL_RANK", "TORCHELASTIC_RUN_ID", "WORLD_SIZE", "RANK", "POSE_FAULT", "POSE_FAULT_RANK",
                "POSE_FAULT_SIGNAL"):
        env.pop(key, None)
    if fault is not None:
        env["POSE_FAULT"] = fault
    if rank is not None:
        env["POSE_FAULT_RANK"] = rank
    if signal is not None:
        env["POSE_FAULT_SIGNAL"] = signal
    args = [*CONFIG, f"output_dir={out}", "--resume", *extra]
    cmd = (["bash", str(ROOT / "examples" / "pretrain_pose.sh"), *args] if launcher else
           [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
            "pose_mcore.cli", *args])
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _weights(folder: Path) -> dict:
    return {k: v for f in sorted(folder.glob("model-*.safetensors")) for k, v in load_file(f).items()}


def _files(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}


def _assert_complete(out: Path) -> None:
    """No staging folder or temporary file anywhere; every checkpoint and export complete."""
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".staging-") or ".tmp-" in p.name]
    assert not leftovers, leftovers
    for ckpt in (out / "checkpoints").glob("step-*"):
        names = {p.name for p in ckpt.iterdir()}
        assert {"meta.json", "index.json", "pieces-00000.safetensors", "pieces-00001.safetensors", "rank-0.pt",
                 "rank-1.pt"} <= names, (ckpt, names)
    for export in ("teacher", "generator"):
        assert (out / export / "config.json").is_file() and (out / export / "model.safetensors.index.json").is_file()


@pytest.mark.slow
def test_kill_anywhere_resume_to_the_same_bits(tmp_path):
    whole = _launch(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]

    run = tmp_path / "killed"
    for fault, rank in KILLS:
        proc = _launch(run, fault, rank, launcher=rank is not None)
        assert proc.returncode != 0, f"{fault}: the run was not killed\n{proc.stderr[-2000:]}"
        assert f"sent SIGKILL at {fault}" in proc.stderr, f"{fault}: {proc.stderr[-3000:]}"
        if rank is not None:  # the launcher ends the run and says what to do, rather than hanging
            assert "Run the same command with --resume" in proc.stderr
    final = _launch(run)
    assert final.returncode == 0, final.stderr[-3000:]

    _assert_complete(run)
    for export in ("generator", "teacher"):
        a, b = _weights(tmp_path / "whole" / export), _weights(run / export)
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), export

    before = _files(run)
    start = time.monotonic()
    again = _launch(run)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "is finished" in again.stdout and "Nothing to do" in again.stdout
    assert time.monotonic() - start < 120
    assert _files(run) == before  # nothing trained, nothing rewritten


def test_unknown_fault_point_is_named(monkeypatch):
    from pose_mcore.faults import fault_point

    monkeypatch.setitem(os.environ, "POSE_FAULT", "explode@3")
    with pytest.raises(ValueError, match="unknown point 'explode'"):
        fault_point("step", 3)


DEMO_SHORT = ["--config", "tiny-cpu-tp2", "teacher.steps=4", "phase1.steps=2", "phase2.steps=4", "checkpoint_every=2",
              "log_every=1", "deterministic=true",  # GPU ranks: no atomics in backward (nothing changes on the CPU)
              "evaluation.videos=8", "evaluation.teacher_steps=2"]


@pytest.mark.slow
def test_resume_inside_phase2_on_the_demo_layout_is_bit_identical(tmp_path):
    """The shipped TP=2 demo (``tiny-cpu-tp2``: sequence parallelism on 2 ranks), stopped inside Phase II after the
    head has trained (--exit-after 8: the teacher's 4 steps, Phase I's 2, Phase II's first 2, checkpointed) and
    resumed, ends as the uninterrupted run: the generator bit for bit, every logged Phase II metric and the
    end-of-run report measured on the tensor-parallel models. A head whose replicated weights drifted apart on the
    TP ranks broke this: a checkpoint keeps one rank's copy."""
    # as a user runs the demo: without the suite's TRITON_INTERPRET, the CPU ranks run the kernels' torch references
    env = rank_env(2, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHON=sys.executable, NPROC="2", TRITON_INTERPRET="0")
    for key in ("LOCAL_RANK", "TORCHELASTIC_RUN_ID", "WORLD_SIZE", "RANK", "POSE_FAULT", "POSE_FAULT_RANK"):
        env.pop(key, None)

    def launch(out: Path, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(ROOT / "examples" / "pretrain_pose.sh"), *DEMO_SHORT, f"output_dir={out}",
                               *extra], env=env, capture_output=True, text=True, timeout=600)

    whole = launch(tmp_path / "Y")
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert ("TP=2+SP CP=1 DP=1, micro-batch 8 x 1 accumulation x DP 1 = global batch 8, replicated optimizer, "
            "precision auto") in whole.stdout, whole.stdout[:2000]
    stopped = launch(tmp_path / "X", "--exit-after", "8")
    assert stopped.returncode != 0 and "exit after 8 steps" in stopped.stderr, stopped.stderr[-3000:]
    resumed = launch(tmp_path / "X", "--resume")
    assert resumed.returncode == 0 and "resumed phase2 at step 2" in resumed.stdout, resumed.stderr[-3000:]
    a, b = _weights(tmp_path / "Y" / "generator"), _weights(tmp_path / "X" / "generator")
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    metrics = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
               for run in ("Y", "X")]
    phase2 = [{r["step"]: r for r in m if r["phase"] == "phase2"} for m in metrics]
    assert sorted(phase2[0]) == sorted(phase2[1]) == [1, 2, 3, 4] and phase2[0] == phase2[1]
    tables = [[line for line in (tmp_path / run / "quality.md").read_text().splitlines() if line.startswith("|")]
              for run in ("Y", "X")]
    assert len(tables[0]) == 5 and tables[0] == tables[1]
    assert "| POSE generator, 1 step | 1 |" in whole.stdout and "| teacher, 2 Euler steps with guidance 3 | 4 |" \
        in whole.stdout
