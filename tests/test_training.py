"""The training loop: resuming gives the same run, a checkpoint interrupted while written leaves the
previous one usable, bad input is refused with one message, and the launcher runs end to end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import rank_env
from safetensors.torch import load_file

import pose_mcore.training.checkpointing as checkpointing
from pose_mcore.config.train import load_train_config
from pose_mcore.data.latents import write_latent_dataset
from pose_mcore.data.procedural import ProceduralConfig, ProceduralVideos
from pose_mcore.training.checkpointing import latest_checkpoint
from pose_mcore.training.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["preset=tiny-t2v", "micro_batch_size=2", "data.size=64", "data.frames=3", "data.height=8", "data.width=8",
         "teacher.steps=4", "phase1.steps=4", "phase2.steps=3", "phase1.fake_updates=1", "checkpoint_every=2",
         "log_every=1", "phase2.head_dim=16", "phase2.head_queries=2", "phase2.head_heads=2", "phase1.lora_rank=4",
         "teacher.optim.lr=1e-3", "phase1.optim_g.lr=1e-4", "phase1.optim_fake.lr=1e-3", "phase2.optim_g.lr=1e-4",
         "phase2.optim_d.lr=1e-4"]


def _run(out: Path, exit_after: int | None = None, resume: bool = False) -> None:
    Trainer(load_train_config(None, [*SMALL, f"output_dir={out}"]), exit_after=exit_after).run(resume=resume)


def _records(out: Path) -> dict[tuple[str, int], dict]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {(r["phase"], r["step"]): r for r in lines}


def test_resume_continues_exactly(tp1, tmp_path, capsys):
    """Every metric after the resume point and the generator as an uninterrupted run's; the run's record (config,
    versions: once) and each start (the second from its checkpoint); output lines stamped with time and rank."""
    _run(tmp_path / "whole")
    with pytest.raises(SystemExit, match="exit after 7 steps"):
        _run(tmp_path / "split", exit_after=7)  # teacher 4 + phase1 3: the latest checkpoint is phase1 step 2
    assert latest_checkpoint(tmp_path / "split" / "checkpoints").name == "step-00000006"
    record = (tmp_path / "split" / "run.json").read_text()
    capsys.readouterr()
    _run(tmp_path / "split", resume=True)
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d rank 0 \| .*", line) for line in lines), lines[:3]
    assert any(line.endswith("| resumed phase1 at step 2 from " + str(tmp_path / "split" / "checkpoints" /
                                                                      "step-00000006")) for line in lines)
    assert (tmp_path / "split" / "run.json").read_text() == record
    run = json.loads(record)
    assert run["versions"]["torch"] == torch.__version__.split("+")[0] or run["versions"]["torch"] == torch.__version__
    assert run["config"]["output_dir"] == str(tmp_path / "split") and "megatron-core" in run["versions"]
    starts = [json.loads(line) for line in (tmp_path / "split" / "starts.jsonl").read_text().splitlines()]
    assert [s["resumed_from"] for s in starts] == [None, str(tmp_path / "split" / "checkpoints" / "step-00000006")]
    whole, split = _records(tmp_path / "whole"), _records(tmp_path / "split")
    after = [k for k in whole if k[0] == "phase2" or (k[0] == "phase1" and k[1] > 2)]
    assert len(after) == 5
    for key in after:
        assert split[key] == whole[key], key
    a = load_file(tmp_path / "whole" / "generator" / "model-00001-of-00001.safetensors")
    b = load_file(tmp_path / "split" / "generator" / "model-00001-of-00001.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_interrupted_checkpoint_leaves_the_previous_one(tp1, tmp_path, monkeypatch):
    real_save = checkpointing.save_pieces
    calls = {"n": 0}

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint (teacher step 4), while its files are written
            raise KeyboardInterrupt("killed")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(checkpointing, "save_pieces", failing)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path)
    latest = latest_checkpoint(tmp_path / "checkpoints")
    assert latest.name == "step-00000002"
    assert not [p for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".") and "tmp" in p.name]
    monkeypatch.setattr(checkpointing, "save_pieces", real_save)
    _run(tmp_path, resume=True)
    assert (tmp_path / "generator" / "config.json").is_file()


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return subprocess.run([sys.executable, "-m", "pose_mcore.cli", "tensor_parallel=1", *args], capture_output=True,
                          text=True, timeout=300, env=env, cwd=cwd)  # one process: the demo config is DP=2


def test_unknown_config_key(tmp_path):
    proc = _cli(*SMALL, f"output_dir={tmp_path / 'out'}", "phase2.learning_rate=1", cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown config key(s) in phase2: learning_rate" in proc.stderr
    assert not (tmp_path / "out").exists()
    proc = _cli("--config", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert proc.returncode == 2 and "missing.yaml: cannot read the config" in proc.stderr


def test_missing_and_malformed_dataset_shards(tmp_path):
    data = ProceduralVideos(ProceduralConfig(frames=3, height=8, width=8), 12)
    manifest = write_latent_dataset((data[i] for i in range(12)), tmp_path / "data", per_shard=4)
    shards = sorted((tmp_path / "data").glob("shard-*.safetensors"))
    assert len(shards) == 3
    shards[1].write_bytes(shards[1].read_bytes()[:100])
    proc = _cli(*SMALL, "data.kind=latents", f"data.path={manifest}", f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert proc.returncode == 2 and "shard-00001.safetensors: not a readable safetensors file" in proc.stderr
    shards[1].unlink()
    proc = _cli(*SMALL, "data.kind=latents", f"data.path={manifest}", f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert proc.returncode == 2 and "manifest.jsonl:5: shard" in proc.stderr and "not found" in proc.stderr


def test_latent_dataset_trains(tp1, tmp_path):
    data = ProceduralVideos(ProceduralConfig(frames=3, height=8, width=8, text_dim=32), 16)
    manifest = write_latent_dataset((data[i] for i in range(16)), tmp_path / "data",
                                    negative={"text": torch.zeros(3, 32)})
    overrides = [*SMALL, "data.kind=latents", f"data.path={manifest}", f"output_dir={tmp_path / 'out'}",
                 "phases=[teacher]"]
    Trainer(load_train_config(None, overrides)).run()
    assert (tmp_path / "out" / "generator" / "config.json").is_file()


def test_teacher_checkpoint_of_the_wrong_family(tmp_path):
    sys.path.insert(0, str(ROOT / "tests"))
    from hunyuan_reference import diffusers_hunyuan

    diffusers_hunyuan("t2v").save_pretrained(tmp_path / "hy")
    from pose_mcore.checkpoint.command import main as convert

    assert convert(["import", "--src", str(tmp_path / "hy"), "--dst", str(tmp_path / "hy_pose")]) == 0
    proc = _cli(*SMALL, f"teacher_checkpoint={tmp_path / 'hy_pose'}", f"output_dir={tmp_path / 'out'}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "holds a HunyuanConfig model but the preset 'tiny-t2v' is a WanConfig" in proc.stderr


@pytest.mark.slow
def test_launcher_end_to_end(tmp_path):
    """bash examples/pretrain_pose.sh: 2 ranks (TP=2, sequence parallel), every phase with the copies of every
    weight and gradient checked bitwise equal across the ranks after each step, then the generator exports to
    diffusers and loads there."""
    env = rank_env(2, PYTHON=sys.executable, NPROC="2")  # CPU ranks unless there are 2 GPUs
    for key in ("LOCAL_RANK", "TORCHELASTIC_RUN_ID", "WORLD_SIZE"):
        env.pop(key, None)
    proc = subprocess.run(["bash", str(ROOT / "examples" / "pretrain_pose.sh"), "--config", "tiny-cpu-tp2", *SMALL,
                           "preset=tiny-i2v", "evaluation.videos=0",
                           f"output_dir={tmp_path / 'run'}", "sample_every=2", "check_replicas_every=1"], env=env,
                          capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "TP=2+SP CP=1 DP=1, micro-batch 2 x 1 accumulation x DP 1 = global batch 2" in proc.stdout
    run = tmp_path / "run"
    assert {r["phase"] for r in _records(run).values()} == {"teacher", "phase1", "phase2"}
    assert (run / "samples" / "phase2-final.gif").is_file() and (run / "samples" / "teacher-000002.gif").is_file()
    from pose_mcore.checkpoint.command import main as convert

    assert convert(["export", "--src", str(run / "generator"), "--dst", str(tmp_path / "diffusers"),
                    "--layout", "wan-diffusers"]) == 0
    from diffusers import WanTransformer3DModel

    assert WanTransformer3DModel.from_pretrained(tmp_path / "diffusers").config.in_channels == 12


@pytest.mark.parametrize("name", ["tiny-cpu", "tiny-cpu-tp2", "wan2.1-i2v-14b", "hunyuan-i2v-13b", "wan2.2-t2v-a14b",
                                  "wan2.2-i2v-a14b", "hunyuan1.5-t2v-480p", "hunyuan1.5-i2v-720p"])
def test_shipped_configs_are_valid(name):
    """Every shipped config passes the whole validation for the ranks it is made for (the tiny ones: the launcher's
    2; the 14B ones: one node of 8 GPUs)."""
    from pose_mcore.training.validate import validate_train_config

    cfg = load_train_config(ROOT / "examples" / "configs" / f"{name}.yaml")
    world, device = (2, "cpu") if name.startswith("tiny") else (8, "cuda")
    model = validate_train_config(cfg, world, files=False, device_type=device)
    assert model.tensor_model_parallel_size == cfg.tensor_parallel


def test_tensorboard_logging(tp1, tmp_path):
    overrides = [*SMALL, f"output_dir={tmp_path}", "phases=[teacher]", "teacher.steps=2", "tensorboard=true"]
    Trainer(load_train_config(None, overrides)).run()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_refuses_to_overwrite_a_run(tp1, tmp_path):
    from pose_mcore.config.train import TrainConfigError

    overrides = [*SMALL, f"output_dir={tmp_path}", "phases=[teacher]", "teacher.steps=2"]
    Trainer(load_train_config(None, overrides)).run()
    with pytest.raises(TrainConfigError, match="already holds checkpoints .* pass --resume"):
        Trainer(load_train_config(None, overrides)).run()


def test_plain_log_lines_without_a_terminal(tmp_path, capsys):
    """Under CI, nohup or SLURM the log gets one line per logged step, not a progress bar's redraws."""
    from pose_mcore.training.logging import RunLogger

    logger = RunLogger(tmp_path, enabled=True, tensorboard=False, interactive=False)
    logger.start_phase("teacher", 6, 0)
    for step in range(1, 7):
        logger.log("teacher", step, step, {"loss": 0.5, "stepped": 1.0}, rate=3.0, write=step % 3 == 0)
    logger.end_phase()
    logger.close()
    out = capsys.readouterr()
    assert out.out.splitlines() == ["teacher: step 0 of 6", "teacher 3/6 loss=0.5 it/s=3.00", "teacher 6/6 loss=0.5 it/s=3.00"]
    assert "\r" not in out.err + out.out
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_end_of_run_report_measures_the_teacher_and_the_generator(tp1, tmp_path, capsys):
    """``evaluation.videos``: the table's rows are the held-out measures of the exported teacher (its full step
    count and 1 step, not the fake score's LoRA) and the exported generator, recomputed here from the files."""
    from pose_mcore.checkpoint.load import load_model
    from pose_mcore.evaluation.quality import HeldOut, sample_videos
    from pose_mcore.pose.conditioning import Conditioner

    run = tmp_path / "run"
    Trainer(load_train_config(None, [*SMALL, "preset=tiny-i2v", "evaluation.videos=6", "evaluation.teacher_steps=2",
                                     "phase1.real_guidance=2.0", f"output_dir={run}"])).run()
    out = capsys.readouterr().out
    assert "| POSE generator, 1 step | 1 |" in out and "samples (real videos left" in out
    rows = {r["row"]: r for r in json.loads((run / "quality.json").read_text())}
    assert list(rows) == ["teacher, 2 Euler steps with guidance 2", "teacher, 1 step", "POSE generator, 1 step"]
    assert rows["teacher, 2 Euler steps with guidance 2"]["nfe"] == 4
    teacher, generator = load_model(run / "teacher"), load_model(run / "generator")
    held = HeldOut.procedural(teacher.config, 6, 3, 8, 8)
    conditioner = Conditioner(teacher.config, stand_ins=True)
    for name, model, sampler, steps in (("teacher, 2 Euler steps with guidance 2", teacher, "teacher", 2),
                                        ("teacher, 1 step", teacher, "student", 1),
                                        ("POSE generator, 1 step", generator, "student", 1)):
        want = held.measure(sample_videos(model, conditioner, held.prompts, sampler, steps, 2.0, 1234)[0])
        assert want == pytest.approx({k: rows[name][k] for k in want}, rel=1e-5, abs=1e-6), name
    assert rows["teacher, 1 step"]["fd"] != rows["POSE generator, 1 step"]["fd"]
    again = _cli(*SMALL, "preset=tiny-i2v", "evaluation.videos=6", "evaluation.teacher_steps=2",
                 "phase1.real_guidance=2.0", f"output_dir={run}", "--resume", cwd=tmp_path)
    assert again.returncode == 0 and f"its report {run / 'quality.md'}" in again.stdout
