"""Every bad training config is refused before any work: exit status 2, one line per problem naming the
key, no traceback, nothing written to the output directory. Options and overrides mix in any order."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch

from pose_mcore.cli import main, parse_args
from pose_mcore.config.train import TrainConfig, load_train_config
from pose_mcore.training.validate import validate_train_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ["preset=tiny-t2v", "tensor_parallel=1", "micro_batch_size=8", "data.frames=3", "data.height=8",
        "data.width=8"]
"""A config every case below changes in one value (from the default tiny-cpu: the value's rule must not depend on
what the demo config happens to set)."""

# Every numeric field of TrainConfig with values that break its rule ("x" is the wrong type everywhere).
BAD_VALUES: dict[str, list] = {
    "tensor_parallel": [0, -1, 3],  # 3 does not divide the world size of 1
    "context_parallel": [0, -1, 2],  # 2 does not divide the world size of 1
    "micro_batch_size": [0, -2, 2.5],
    "global_batch_size": [0, -8, 12],  # 12 is not a multiple of micro_batch_size 8 x 1 data-parallel rank
    "seed": [-1],
    "checkpoint_every": [-1],
    "sample_every": [-3],
    "check_replicas_every": [-1],
    "log_every": [0],
    "max_nonfinite": [0],
    "data.size": [0],
    "data.frames": [0],
    "data.height": [-8],
    "data.width": [0],
    "data.seed": [-1],
    "teacher.steps": [-5, 0],
    "teacher.shift": [0, -1.0],
    "teacher.uncond_prob": [-0.1, 1.5],
    "phase1.steps": [0],
    "phase1.fake_updates": [0],
    "phase1.real_guidance": [0, -3.0],
    "phase1.real_guidance_low": [0, -3.0, 2.0],  # 2.0: tiny-t2v is one model, not two experts
    "phase1.t_min": [-0.1, 1.0],
    "phase1.t_max": [0, 1.5, 0.01],  # 0.01 is below t_min = 0.02
    "phase1.shift": [0],
    "phase1.lora_rank": [0],
    "phase1.lora_alpha": [0],
    "phase2.steps": [-1],
    "phase2.ema_decay": [1.0, -0.5],
    "phase2.head_dim": [0],
    "phase2.head_queries": [0, 129],
    "phase2.head_heads": [0, 3],  # 3 does not divide head_dim = 64
    "phase2.t_adv_min": [1.0, -0.1],
    "phase2.r1_weight": [-1.0],
    "phase2.sigma_s": [-0.1],
    "phase2.sigma_t": [-0.1],
    "phase2.consistency_weight": [-10.0],
    "phase2.t_min": [1.2],
    "phase2.t_max": [2.0],
    "phase2.shift": [-5.0],
    "vae_tile": [0, 20],
    "evaluation.videos": [-1, 1],
    "evaluation.teacher_steps": [0],
    "exit_duration_mins": [0, -5.0],
}
for _section in ("teacher.optim", "phase1.optim_g", "phase1.optim_fake", "phase2.optim_g", "phase2.optim_d"):
    BAD_VALUES.update({f"{_section}.lr": [0, -1e-4], f"{_section}.eps": [0], f"{_section}.weight_decay": [-0.1],
                       f"{_section}.warmup_steps": [-1], f"{_section}.clip_grad": [-1.0]})
    BAD_VALUES[f"{_section}.betas"] = [[0.9, 1.0], [-0.1, 0.999]]


def _numeric_fields(cls: type, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        base = args[0] if typing.get_origin(hint) in (typing.Union, type(int | None)) else hint
        if dataclasses.is_dataclass(base):
            out += _numeric_fields(base, f"{prefix}{f.name}.")
        elif base in (int, float) or typing.get_origin(base) is tuple:
            out.append(f"{prefix}{f.name}")
    return out


def test_the_table_covers_every_numeric_field():
    assert sorted(_numeric_fields(TrainConfig)) == sorted(BAD_VALUES)


def _refused(capsys, tmp_path: Path, *args: str) -> list[str]:
    out = tmp_path / "out"
    rc = main([*TINY, f"output_dir={out}", *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert lines and all(line.startswith("pose-train: error: ") for line in lines), err
    assert not out.exists()
    return lines


CASES = [(key, value) for key, values in BAD_VALUES.items() for value in values] + [
    (key, "x") for key in BAD_VALUES if not key.endswith("betas")]


@pytest.mark.parametrize("key, value", CASES, ids=[f"{k}={v}" for k, v in CASES])
def test_bad_numeric_value_is_refused_in_one_line(capsys, tmp_path, key, value):
    text = str(value).replace(" ", "")
    lines = _refused(capsys, tmp_path, f"{key}={text}")
    leaf = key.split(".")[-1]
    assert len(lines) == 1 and leaf in lines[0], lines


def test_all_problems_at_once(capsys, tmp_path):
    lines = _refused(capsys, tmp_path, "micro_batch_size=0", "phase2.ema_decay=1", "precision=fp16")
    assert len(lines) == 3
    assert [line.split(": ")[2].split("=")[0] for line in lines] == ["micro_batch_size", "phase2.ema_decay", "precision"]


@pytest.mark.parametrize("args, message", [
    (["preset=tiny-x"], "preset='tiny-x': unknown preset"),
    (["phases=[teacher,phase3]"], "phases=['teacher', 'phase3']: must be a non-empty list"),
    (["phases=[phase1]"], "teacher_checkpoint=None: phases ['phase1'] need a teacher"),
    (["phases=[phase1]", "teacher_checkpoint=/no/such/teacher"], "teacher_checkpoint='/no/such/teacher': not a pose"),
    (["--config", "/no/such.yaml"], "/no/such.yaml: cannot read the config"),
    (["data.kind=latents", "data.path=/no/manifest.jsonl"], "data.path='/no/manifest.jsonl': no such manifest"),
    (["precision=fp16"], "precision='fp16': must be one of auto, bf16, amp, fp32"),
    (["teacher.steps=-5"], "teacher.steps=-5: must be >= 1"),
    (["micro_batch_size=0"], "micro_batch_size=0: must be >= 1"),
    (["tensor_parallel=3"], "tensor_parallel=3: must divide the world size 1"),
    (["phase2.feature_layers=[0,7]"], "phase2.feature_layers=[0, 7]: must be a non-empty list of block indices in [0, 2)"),
    (["phase2.r1_on=inputs"], "phase2.r1_on='inputs': must be one of logit, features"),
    (["phase2.r1_on=features"], "phase2.r1_on='features': needs phase2.backbone=full (not 'ema')"),
    (["phase1.generator_params=norms"], "phase1.generator_params='norms': must be one of all, linears"),
    (["phase2.generator_params=lora"], "phase2.generator_params='lora': must be one of all, linears"),
    (["data.height=6"], "data='3x6x8': procedural videos (frames x height x width): a shape of size 5 moving 2 "
                        "pixels over 3 frames does not fit a 6x8 frame (height and width must be at least 7)"),
    (["data.size=4", "micro_batch_size=8"], "data.size=4: the procedural dataset must hold at least one global "
                                            "batch (8 samples)"),
    (["model.tensor_model_parallel_size=2"], "model.tensor_model_parallel_size=2: the layout is set by "
                                             "tensor_parallel, not in model"),
    (["model.context_parallel_size=2"], "model.context_parallel_size=2: the layout is set by context_parallel"),
    (["model.sequence_parallel=true"], "model.sequence_parallel=True: needs tensor_parallel > 1"),
    (["model.sequence_parallel=2"], "model.sequence_parallel=2: must be true or false"),
])
def test_reported_cases(capsys, tmp_path, args, message):
    lines = _refused(capsys, tmp_path, *args)
    assert any(message in line for line in lines), lines


def test_broken_config_file_and_unreadable_teacher(capsys, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("phases: [teacher\n")
    assert any("not valid YAML" in line for line in _refused(capsys, tmp_path, "--config", str(broken)))
    teacher = tmp_path / "teacher"
    teacher.mkdir()
    (teacher / "config.json").write_text("{not json")
    lines = _refused(capsys, tmp_path, "phases=[phase1]", f"teacher_checkpoint={teacher}")
    assert any("teacher_checkpoint" in line for line in lines), lines


def test_vae_tile_fits_the_model_folders_vae(capsys, tmp_path, model_folders):
    """Wan2.2's VAE downsamples 16x: a 32-pixel tile (enough for an 8x VAE) is refused at start-up."""
    assert not any("vae_tile" in line for line in _refused(
        capsys, tmp_path, f"model_dir={model_folders['wan-t2v']}", "vae_tile=32", "micro_batch_size=0"))
    lines = _refused(capsys, tmp_path, f"model_dir={model_folders['wan-ti2v']}", "vae_tile=32")
    assert any("vae_tile=32: must be a positive multiple of 64 (this VAE's 16x downsampling" in line
               for line in lines), lines


def test_tensor_parallel_defaults_to_one_as_in_megatron():
    """Ranks go to data parallelism unless the config asks for TP (``NPROC=4`` alone is DP=4, not TP=4; the default
    demo is DP=2); the TP demo's config (tiny-cpu-tp2) asks for TP=2 itself; sequence parallelism follows TP > 1
    unless turned off, which trains too (tests/test_train_parallel.py's tp2_nosp_dp2 layout)."""
    assert TrainConfig().tensor_parallel == 1
    model = validate_train_config(load_train_config(None, [*TINY, "micro_batch_size=2", "teacher.steps=1"]), world_size=4)
    assert (model.tensor_model_parallel_size, model.sequence_parallel) == (1, False)
    demo = load_train_config(ROOT / "examples" / "configs" / "tiny-cpu-tp2.yaml")
    assert demo.tensor_parallel == 2 and validate_train_config(demo, world_size=2).sequence_parallel
    default = validate_train_config(load_train_config(ROOT / "examples" / "configs" / "tiny-cpu.yaml"), world_size=2)
    assert (default.tensor_model_parallel_size, default.sequence_parallel) == (1, False)  # DP=2
    no_sp = validate_train_config(load_train_config(None, [*TINY, "tensor_parallel=2", "model.sequence_parallel=false",
                                                           "micro_batch_size=2", "teacher.steps=1"]), world_size=2)
    assert (no_sp.tensor_model_parallel_size, no_sp.sequence_parallel) == (2, False)


def test_the_launcher_refuses_what_a_rank_would(tmp_path):
    """``bash examples/pretrain_pose.sh`` checks the config for its ranks before it starts them: a procedural frame
    too small for its shapes is one line naming ``data``, exit 2, no rank started (no advice to --resume)."""
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    proc = subprocess.run(["bash", str(ROOT / "examples" / "pretrain_pose.sh"), "data.height=6",
                           f"output_dir={tmp_path / 'out'}"], env={**env, "PYTHON": sys.executable, "NPROC": "2"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines() == [
        "pose-train: error: data='5x6x16': procedural videos (frames x height x width): a shape of size 5 moving 4 "
        "pixels over 5 frames does not fit a 6x16 frame (height and width must be at least 9)"], proc.stderr
    assert not (tmp_path / "out").exists()


def test_batch_divisible_by_data_parallel_size():
    config = load_train_config(None, [*TINY, "micro_batch_size=1", "global_batch_size=3", "tensor_parallel=1"])
    with pytest.raises(ValueError, match=r"global_batch_size=3: must be a multiple of micro_batch_size 1 x the "
                                         r"data-parallel size 2 \(world size 2 / tensor_parallel 1 / "
                                         r"context_parallel 1\)"):
        validate_train_config(config, world_size=2)
    accumulate = load_train_config(None, [*TINY, "micro_batch_size=2", "global_batch_size=8", "tensor_parallel=1",
                                                 "teacher.steps=1"])
    validate_train_config(accumulate, world_size=2)  # 2 accumulation steps of 2 samples on each of 2 ranks
    with pytest.raises(ValueError, match=r"num_attention_heads=4 must be divisible by tensor_model_parallel_size=8"):
        validate_train_config(load_train_config(None, [*TINY, "micro_batch_size=8", "tensor_parallel=8"]), world_size=8)


@pytest.mark.parametrize(("overrides", "world", "message"), [
    (["context_parallel=3"], 4, r"context_parallel=3: must divide the world size 4"),
    (["tensor_parallel=2", "context_parallel=4"], 4,
     r"tensor_parallel=2: x context_parallel 4 must divide the world size 4"),
    (["tensor_parallel=2", "context_parallel=4"], 8,
     r"num_attention_heads=4 must be divisible by tensor_model_parallel_size=2 x context_parallel_size=4"),
    (["context_parallel=2", "tensor_parallel=2", "data.frames=1", "data.height=2", "data.width=6"], 4,
     r"context_parallel=2: x tensor_parallel 2: 3 video tokens per sample \(1x2x6 latents, patch \(1, 2, 2\)\) "
     r"cannot be split into 4 shards"),
    (["data.height=7"], 1, r"data='3x7x8': latent frames x height x width must be multiples of the patch size"),
])
def test_bad_layouts_are_refused_naming_the_numbers(overrides, world, message):
    config = load_train_config(None, [*TINY, "micro_batch_size=1", *overrides])
    with pytest.raises(ValueError, match=message):
        validate_train_config(config, world_size=world)


def test_context_parallel_takes_ranks_from_data_parallelism():
    model = validate_train_config(load_train_config(None, [*TINY, "micro_batch_size=1", "context_parallel=2",
                                                           "tensor_parallel=2", "teacher.steps=1"]), world_size=8)
    assert (model.tensor_model_parallel_size, model.context_parallel_size) == (2, 2)
    with pytest.raises(ValueError, match=r"data-parallel size 2 \(world size 8 / tensor_parallel 2 / "
                                         r"context_parallel 2\)"):
        validate_train_config(load_train_config(None, [*TINY, "micro_batch_size=1", "global_batch_size=3",
                                                       "context_parallel=2", "tensor_parallel=2"]), world_size=8)


def test_options_and_overrides_in_any_order():
    args = parse_args(["micro_batch_size=4", "--exit-after", "1", "seed=3", "--resume", "phase2.steps=2"])
    assert args.exit_after == 1 and args.resume and args.overrides == ["micro_batch_size=4", "seed=3", "phase2.steps=2"]


def test_command_line_error_is_one_line_without_warnings(tmp_path):
    env = dict(os.environ)
    for key in ("WORLD_SIZE", "RANK", "PYTHONWARNINGS"):
        env.pop(key, None)
    proc = subprocess.run([sys.executable, "-m", "pose_mcore.cli", "micro_batch_size=0", "tensor_parallel=1", "--exit-after", "1",
                           f"output_dir={tmp_path / 'out'}"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["pose-train: error: micro_batch_size=0: must be >= 1"], proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU refusal")
@pytest.mark.parametrize("precision", ["bf16", "amp"])
def test_bf16_needs_cuda(capsys, tmp_path, precision):
    lines = _refused(capsys, tmp_path, f"precision={precision}")
    assert lines == [f"pose-train: error: precision='{precision}': bf16 autocast needs CUDA (megatron-core's linear "
                     "backward re-enters autocast on CUDA only); on the CPU use auto or fp32"]
