"""One validation pass over a whole :class:`TrainConfig` and the model config it implies, before any
process group, model or dataset is built: every problem is one line naming the key and the rule, all
problems at once.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pose_kernels import MAX_QUERIES

from pose_mcore.config.base import ConfigError, VideoDiTConfig
from pose_mcore.config.train import PHASES, DataConfig, OptimConfig, TrainConfig, TrainConfigError
from pose_mcore.data.procedural import ProceduralConfig
from pose_mcore.encoders.model import vae_spatial_factor, vae_tile_problem
from pose_mcore.models.registry import ALL_PRESETS, family_of_preset
from pose_mcore.pose.roles import BACKBONE_MODES, GENERATOR_INITS, GENERATOR_PARAMS
from pose_mcore.training.stopping import signal_numbers

PRECISIONS = ("auto", "bf16", "amp", "fp32")
WANDB_MODES = ("auto", "online", "offline")
DATA_KINDS = ("procedural", "latents")
HEADS = ("semantic", "conv")
ADV_LOSSES = ("hinge", "non_saturating")
R1_TARGETS = ("logit", "features")
LAYOUT_KEYS = {"tensor_model_parallel_size": "tensor_parallel", "context_parallel_size": "context_parallel",
               "pipeline_model_parallel_size": "nothing (pose_mcore has no pipeline parallelism)"}
"""Model config fields the run's layout sets: a ``model.*`` override of them is refused."""

Rule = tuple[Callable[[Any], bool], str]

POSITIVE: Rule = (lambda v: v > 0, "must be > 0")
AT_LEAST_1: Rule = (lambda v: v >= 1, "must be >= 1")
NON_NEGATIVE: Rule = (lambda v: v >= 0, "must be >= 0")
UNIT_OPEN_TOP: Rule = (lambda v: 0 <= v < 1, "must be in [0, 1)")
UNIT: Rule = (lambda v: 0 <= v <= 1, "must be in [0, 1]")


class Problems:
    """The problems found so far, one line each."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, key: str, value: Any, rule: str) -> None:
        self.lines.append(f"{key}={value!r}: {rule}")

    def check(self, key: str, value: Any, rule: Rule) -> bool:
        """Record a problem unless ``value`` is a finite number that satisfies ``rule``."""
        test, text = rule
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self.add(key, value, "must be a finite number")
            return False
        if not test(value):
            self.add(key, value, text)
            return False
        return True

    def choice(self, key: str, value: Any, options: tuple[str, ...]) -> None:
        if value not in options:
            self.add(key, value, f"must be one of {', '.join(options)}")


def _optim(p: Problems, key: str, o: OptimConfig) -> None:
    p.check(f"{key}.lr", o.lr, POSITIVE)
    for i, beta in enumerate(o.betas):
        p.check(f"{key}.betas[{i}]", beta, UNIT_OPEN_TOP)
    p.check(f"{key}.eps", o.eps, POSITIVE)
    p.check(f"{key}.weight_decay", o.weight_decay, NON_NEGATIVE)
    p.check(f"{key}.warmup_steps", o.warmup_steps, NON_NEGATIVE)
    p.check(f"{key}.clip_grad", o.clip_grad, NON_NEGATIVE)


def _noise_range(p: Problems, key: str, t_min: float, t_max: float, shift: float) -> None:
    ok = p.check(f"{key}.t_min", t_min, UNIT_OPEN_TOP) & p.check(f"{key}.t_max", t_max, (lambda v: 0 < v <= 1,
                                                                                            "must be in (0, 1]"))
    if ok and t_min >= t_max:
        p.add(f"{key}.t_max", t_max, f"must be greater than {key}.t_min={t_min}")
    p.check(f"{key}.shift", shift, POSITIVE)


def _data(p: Problems, d: DataConfig, global_batch: int | None, files: bool) -> None:
    p.choice("data.kind", d.kind, DATA_KINDS)
    if d.kind == "latents" and not d.path:
        p.add("data.path", d.path, "data.kind='latents' needs the dataset's manifest")
    elif d.kind == "latents" and files and not Path(d.path).is_file():
        p.add("data.path", d.path, "no such manifest file")
    ok = all([p.check(f"data.{name}", getattr(d, name), AT_LEAST_1) for name in ("size", "frames", "height", "width")])
    p.check("data.seed", d.seed, NON_NEGATIVE)
    if d.kind != "procedural" or not ok:
        return
    problem = ProceduralConfig(frames=d.frames, height=d.height, width=d.width).problem()
    if problem:
        p.add("data", f"{d.frames}x{d.height}x{d.width}", f"procedural videos (frames x height x width): {problem}")
    if global_batch is not None and d.size < global_batch:
        p.add("data.size", d.size, f"the procedural dataset must hold at least one global batch ({global_batch} "
                                   "samples)")


def _layout(p: Problems, c: TrainConfig, world_size: int) -> tuple[int, int, int] | None:
    """(tp, cp, dp) when the layout is valid."""
    cp, tp = c.context_parallel, c.tensor_parallel
    if not (p.check("context_parallel", cp, AT_LEAST_1) & p.check("tensor_parallel", tp, AT_LEAST_1)):
        return None
    if world_size % cp:
        p.add("context_parallel", cp, f"must divide the world size {world_size} (ranks started by torchrun)")
        return None
    if world_size % (tp * cp):
        times = f"x context_parallel {cp} " if cp > 1 else ""
        p.add("tensor_parallel", tp, f"{times}must divide the world size {world_size} (ranks started by torchrun)")
        return None
    dp = world_size // (tp * cp)
    micro_ok = p.check("micro_batch_size", c.micro_batch_size, AT_LEAST_1)
    if c.global_batch_size is not None and p.check("global_batch_size", c.global_batch_size, AT_LEAST_1) \
            and micro_ok and c.global_batch_size % (c.micro_batch_size * dp):
        p.add("global_batch_size", c.global_batch_size,
              f"must be a multiple of micro_batch_size {c.micro_batch_size} x the data-parallel size {dp} "
              f"(world size {world_size} / tensor_parallel {tp} / context_parallel {cp})")
    return tp, cp, dp


def global_batch_size(config: TrainConfig, dp: int) -> int:
    """Samples per optimiser step: ``global_batch_size``, or one micro-batch on each data-parallel rank."""
    return config.global_batch_size or config.micro_batch_size * dp


def _model(p: Problems, c: TrainConfig, layout: tuple[int, int, int] | None) -> VideoDiTConfig | None:
    if c.preset not in ALL_PRESETS:
        p.add("preset", c.preset, f"unknown preset; known: {', '.join(ALL_PRESETS)}")
        return None
    if layout is None:
        return None
    tp, cp, _ = layout
    for key, where in LAYOUT_KEYS.items():
        if key in c.model:
            p.add(f"model.{key}", c.model[key], f"the layout is set by {where}, not in model")
            return None
    sp = c.model.get("sequence_parallel", tp > 1)
    if sp is not True and sp is not False:
        p.add("model.sequence_parallel", sp, "must be true or false")
        return None
    if sp and tp == 1:
        p.add("model.sequence_parallel", sp, "needs tensor_parallel > 1 (it splits the tokens over the TP ranks)")
        return None
    try:
        return family_of_preset(c.preset).make_config(c.preset, tensor_model_parallel_size=tp,
                                                      context_parallel_size=cp, **{**c.model, "sequence_parallel": sp})
    except (ConfigError, TypeError, ValueError) as e:
        p.add("model", c.model, f"preset {c.preset!r} at tensor_parallel={tp} x context_parallel={cp}: {e}")
        return None


def _phases(p: Problems, c: TrainConfig, files: bool) -> None:
    unknown = [name for name in c.phases if name not in PHASES]
    if not c.phases or unknown:
        p.add("phases", c.phases, f"must be a non-empty list of {', '.join(PHASES)}")
        return
    if sorted(c.phases, key=PHASES.index) != list(c.phases) or len(set(c.phases)) != len(c.phases):
        p.add("phases", c.phases, f"each phase at most once, in the order {', '.join(PHASES)}")
    for key in ("teacher_checkpoint", "generator_checkpoint"):
        path = getattr(c, key)
        if path is not None and files and not (Path(path) / "config.json").is_file():
            p.add(key, path, "not a pose_mcore checkpoint folder (no config.json there; convert weights with "
                             "pose-convert import)")
    if c.model_dir is not None and files and not (Path(c.model_dir) / "model_index.json").is_file():
        p.add("model_dir", c.model_dir, "not a diffusers model folder (no model_index.json there)")
    if c.vae_tile is not None:  # 8 without a folder, or where its VAE config is missing
        problem = vae_tile_problem(c.vae_tile, vae_spatial_factor(c.model_dir) if c.model_dir and files else 8)
        if problem:
            p.add("vae_tile", c.vae_tile, problem)
    if "teacher" not in c.phases and c.teacher_checkpoint is None:
        p.add("teacher_checkpoint", None, f"phases {c.phases} need a teacher: set teacher_checkpoint or add "
                                          "the 'teacher' phase")
    for name in PHASES:
        p.check(f"{name}.steps", getattr(c, name).steps, AT_LEAST_1 if name in c.phases else NON_NEGATIVE)


def _teacher(p: Problems, c: TrainConfig) -> None:
    t = c.teacher
    _optim(p, "teacher.optim", t.optim)
    p.check("teacher.shift", t.shift, POSITIVE)
    p.check("teacher.uncond_prob", t.uncond_prob, UNIT)


def _phase1(p: Problems, c: TrainConfig, model: VideoDiTConfig | None) -> None:
    s = c.phase1
    _optim(p, "phase1.optim_g", s.optim_g)
    _optim(p, "phase1.optim_fake", s.optim_fake)
    p.check("phase1.fake_updates", s.fake_updates, AT_LEAST_1)
    p.check("phase1.real_guidance", s.real_guidance, POSITIVE)
    low = s.real_guidance_low
    if low is not None and p.check("phase1.real_guidance_low", low, POSITIVE) and model is not None \
            and getattr(model, "boundary", None) is None:
        p.add("phase1.real_guidance_low", low, f"is for a two-expert teacher; preset {c.preset!r} is one model "
                                               "(leave it unset)")
    _noise_range(p, "phase1", s.t_min, s.t_max, s.shift)
    p.check("phase1.lora_rank", s.lora_rank, AT_LEAST_1)
    p.check("phase1.lora_alpha", s.lora_alpha, POSITIVE)
    p.choice("phase1.generator_params", s.generator_params, GENERATOR_PARAMS)


def _phase2(p: Problems, c: TrainConfig, model: VideoDiTConfig | None) -> None:
    s = c.phase2
    _optim(p, "phase2.optim_g", s.optim_g)
    _optim(p, "phase2.optim_d", s.optim_d)
    p.check("phase2.ema_decay", s.ema_decay, UNIT_OPEN_TOP)
    p.choice("phase2.backbone", s.backbone, BACKBONE_MODES)
    p.choice("phase2.head", s.head, HEADS)
    p.choice("phase2.adv_loss", s.adv_loss, ADV_LOSSES)
    p.choice("phase2.r1_on", s.r1_on, R1_TARGETS)
    p.choice("phase2.generator_params", s.generator_params, GENERATOR_PARAMS)
    if s.r1_on == "features" and s.backbone in BACKBONE_MODES and s.backbone != "full":
        p.add("phase2.r1_on", s.r1_on, f"needs phase2.backbone=full (not {s.backbone!r}): the features of a backbone "
                                       "the discriminator does not train would give the penalty nothing to train")
    dim_ok = p.check("phase2.head_dim", s.head_dim, AT_LEAST_1)
    p.check("phase2.head_queries", s.head_queries,
            (lambda v: 1 <= v <= MAX_QUERIES, f"must be in [1, {MAX_QUERIES}] (the kernel's limit)"))
    if p.check("phase2.head_heads", s.head_heads, AT_LEAST_1) and dim_ok and s.head_dim % s.head_heads:
        p.add("phase2.head_heads", s.head_heads, f"must divide phase2.head_dim={s.head_dim}")
    p.check("phase2.t_adv_min", s.t_adv_min, UNIT_OPEN_TOP)
    for name in ("r1_weight", "sigma_s", "sigma_t", "consistency_weight"):
        p.check(f"phase2.{name}", getattr(s, name), NON_NEGATIVE)
    if s.r1_weight > 0 and s.sigma_s == 0 and s.sigma_t == 0:
        p.add("phase2.sigma_s", s.sigma_s, "ST-R1 (r1_weight > 0) needs sigma_s or sigma_t > 0: it divides by the "
                                           "noise's mean square")
    _noise_range(p, "phase2", s.t_min, s.t_max, s.shift)
    if s.feature_layers is not None and model is not None:
        blocks = model.num_layers + getattr(model, "num_single_layers", 0)
        bad = [i for i in s.feature_layers if not 0 <= i < blocks]
        if not s.feature_layers or bad:
            p.add("phase2.feature_layers", s.feature_layers, f"must be a non-empty list of block indices in "
                                                             f"[0, {blocks}) ({c.preset} has {blocks} blocks)")


def _evaluation(p: Problems, c: TrainConfig) -> None:
    e = c.evaluation
    if p.check("evaluation.videos", e.videos, NON_NEGATIVE) and e.videos == 1:
        p.add("evaluation.videos", e.videos, "must be 0 (no report) or at least 2 (a distance between sets)")
    p.check("evaluation.teacher_steps", e.teacher_steps, AT_LEAST_1)


def _tokens(p: Problems, c: TrainConfig, model: VideoDiTConfig | None) -> None:
    """The procedural videos' latent grid fits the patches, and its tokens split over the token shards (every
    CP x TP rank needs at least one real token: a rank of padding only has nothing to attend from)."""
    d = c.data
    if model is None or d.kind != "procedural" or min(d.frames, d.height, d.width) < 1:
        return
    dims = (d.frames, d.height, d.width)
    if any(n % k for n, k in zip(dims, model.patch_size, strict=True)):
        p.add("data", f"{d.frames}x{d.height}x{d.width}", f"latent frames x height x width must be multiples of "
                                                          f"the patch size {tuple(model.patch_size)}")
        return
    tokens = math.prod(n // k for n, k in zip(dims, model.patch_size, strict=True))
    cp, tp = model.context_parallel_size, model.tensor_model_parallel_size if model.sequence_parallel else 1
    if tokens < cp * tp:
        p.add("context_parallel", cp, f"x tensor_parallel {tp}: {tokens} video tokens per sample "
                                      f"({d.frames}x{d.height}x{d.width} latents, patch {tuple(model.patch_size)}) "
                                      f"cannot be split into {cp * tp} shards of at least one token")


def validate_train_config(config: TrainConfig, world_size: int, files: bool = True, device_type: str | None = None
                          ) -> VideoDiTConfig:
    """Check everything in ``config`` for ``world_size`` ranks on devices of ``device_type`` (default: this
    machine's); return the model config it implies, or raise :class:`TrainConfigError` listing every problem
    (one line each). ``files=False`` leaves out what only the files named in it could say (the memory model,
    which predicts a GPU run from any machine, reads none)."""
    p = Problems()
    layout = _layout(p, config, world_size)
    model = _model(p, config, layout)
    _phases(p, config, files)
    _data(p, config.data, global_batch_size(config, layout[2]) if layout else None, files)
    _teacher(p, config)
    _phase1(p, config, model)
    p.choice("generator_init", config.generator_init, GENERATOR_INITS)
    _phase2(p, config, model)
    _tokens(p, config, model)
    _evaluation(p, config)
    p.check("seed", config.seed, NON_NEGATIVE)
    for name in ("checkpoint_every", "sample_every", "check_replicas_every"):
        p.check(name, getattr(config, name), NON_NEGATIVE)
    p.check("log_every", config.log_every, AT_LEAST_1)
    p.check("max_nonfinite", config.max_nonfinite, AT_LEAST_1)
    try:
        signal_numbers(config.exit_signals)
    except ValueError as e:
        p.add("exit_signals", config.exit_signals, str(e))
    if config.exit_duration_mins is not None:
        p.check("exit_duration_mins", config.exit_duration_mins, POSITIVE)
    p.choice("precision", config.precision, PRECISIONS)
    p.choice("wandb_mode", config.wandb_mode, WANDB_MODES)
    if config.wandb and importlib.util.find_spec("wandb") is None:
        p.add("wandb", config.wandb, "needs the wandb package: pip install 'pose_mcore[wandb]'")
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if config.precision in ("bf16", "amp") and device_type != "cuda":
        p.add("precision", config.precision, "bf16 autocast needs CUDA (megatron-core's linear backward re-enters "
                                             "autocast on CUDA only); on the CPU use auto or fp32")
    if not str(config.output_dir).strip():
        p.add("output_dir", config.output_dir, "must name a folder")
    if p.lines:
        raise TrainConfigError("\n".join(p.lines))
    assert model is not None
    return model
