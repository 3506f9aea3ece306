"""Training configuration: nested dataclasses read from YAML, with ``a.b.c=value`` overrides.

Unknown keys are errors that name the key path; values are converted to the field's type.
Paper hyper-parameters (14B models) are the defaults of the phase sections; the tiny CPU config
overrides them for toy scale.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PHASES = ("teacher", "phase1", "phase2")
"""The training phases, in the order a run takes them."""


class TrainConfigError(ValueError):
    """A training config that cannot be used; the message names the key."""


@dataclass
class OptimConfig:
    lr: float = 1e-6
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 0
    clip_grad: float = 1.0


@dataclass
class DataConfig:
    kind: str = "procedural"
    """'procedural' (moving shapes, no download) or 'latents' (safetensors shards + JSONL manifest)."""
    path: str | None = None
    """The manifest of a 'latents' dataset."""
    size: int = 4096
    """Procedural samples."""
    frames: int = 5
    height: int = 16
    width: int = 16
    seed: int = 0


@dataclass
class TeacherConfig:
    steps: int = 0
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3))
    shift: float = 1.0
    uncond_prob: float = 0.1
    """Probability of dropping the text, so that the teacher also learns the unconditional velocity."""


@dataclass
class Phase1Config:
    steps: int = 500
    optim_g: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-6))
    optim_fake: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-6))
    fake_updates: int = 5
    """Fake-score updates per generator update (DMD2 used 5)."""
    real_guidance: float = 6.0
    """CFG scale of the real score, standard form v_u + g (v_c - v_u); with a two-expert teacher (Wan2.2-A14B),
    the high-noise expert's (diffusers' ``guidance_scale``)."""
    real_guidance_low: float | None = None
    """With a two-expert teacher: the low-noise expert's CFG scale (diffusers' ``guidance_scale_2``); None: the
    same as ``real_guidance``. Must be None for a one-model teacher."""
    t_min: float = 0.02
    t_max: float = 0.98
    shift: float = 5.0
    lora_rank: int = 16
    lora_alpha: float = 16.0
    generator_params: str = "all"
    """What of the generator trains: 'all' (the paper) or 'linears' (the linear layers' weights and biases, what a
    LoRA against the teacher carries in diffusers; norms, modulation tables and the patch embedding stay the
    teacher's)."""


@dataclass
class Phase2Config:
    steps: int = 1000
    optim_g: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-6, betas=(0.5, 0.999)))
    optim_d: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-6, betas=(0.5, 0.999)))
    ema_decay: float = 0.995
    backbone: str = "ema"
    """Discriminator backbone: 'ema' (default), 'frozen' (teacher weights) or 'full' (trained copy)."""
    head: str = "semantic"
    """'semantic' (logit queries) or 'conv' (ablation)."""
    head_dim: int = 64
    head_queries: int = 8
    head_heads: int = 4
    feature_layers: list[int] | None = None
    """Backbone blocks whose outputs feed the head (default: 1/4, 1/2, 3/4 and the last)."""
    t_adv_min: float = 0.7
    adv_loss: str = "hinge"
    r1_weight: float = 1.0
    r1_on: str = "logit"
    """What ST-R1 differences between the perturbed and the clean real sample: 'logit' (the head's output, the
    paper's Eq. 4) or 'features' (the backbone's block outputs at ``feature_layers``, the spec's variant;
    needs ``backbone=full``: the EMA and the frozen backbone's features depend on nothing D trains)."""
    sigma_s: float = 0.05
    sigma_t: float = 0.05
    consistency_weight: float = 10.0
    """lambda of the frame consistency loss (I2V; ignored for T2V models)."""
    t_min: float = 0.02
    t_max: float = 0.98
    shift: float = 5.0
    generator_params: str = "all"
    """As ``phase1.generator_params``."""


@dataclass
class EvaluationConfig:
    videos: int = 0
    """Held-out procedural videos the finished run is measured on (0: no report): the one-step generator
    against the teacher at 1 NFE and at ``teacher_steps`` Euler steps, by FD and the known attributes
    (:mod:`pose_mcore.evaluation.quality`); printed and written to ``<output_dir>/quality.md``. Only runs on
    procedural data that distil (phase1 or phase2): real videos have no held-out set with known attributes."""
    teacher_steps: int = 25
    """Euler steps of the teacher's full row, with ``phase1.real_guidance`` (2 NFE a step unless it is 1)."""


@dataclass
class TrainConfig:
    preset: str = "tiny-t2v"
    model: dict[str, Any] = field(default_factory=dict)
    """Model config overrides (architecture or runtime fields)."""
    tensor_parallel: int = 1
    """TP size (as Megatron-LM's ``--tensor-model-parallel-size``, default 1); sequence parallelism is on when
    TP > 1 unless ``model.sequence_parallel=false``."""
    context_parallel: int = 1
    """CP size: each sample's video tokens split over this many ranks (Ulysses attention, text and image
    context replicated); data parallelism takes the rest: DP = world / (TP x CP)."""
    micro_batch_size: int = 8
    """Samples per rank per forward/backward (as Megatron's ``--micro-batch-size``)."""
    global_batch_size: int | None = None
    """Samples per optimiser step over all data-parallel ranks (default: micro_batch_size x data-parallel
    size); a multiple of that product, the quotient being the gradient-accumulation steps."""
    distributed_optimizer: bool = True
    """Shard Adam states and fp32 main weights over the data- and context-parallel ranks (ZeRO-1, as
    megatron-core's ``--use-distributed-optimizer``, whose DDP reduces over the same ``dp x cp`` group: with
    CP > 1 it shards even at one data-parallel rank); no effect when DP x CP is 1."""
    overlap_grad_reduce: bool = True
    """Reduce gradient buckets while backward still runs (megatron-core DDP's ``overlap_grad_reduce``)."""
    seed: int = 1234
    phases: list[str] = field(default_factory=lambda: ["teacher", "phase1", "phase2"])
    teacher_checkpoint: str | None = None
    """A pose_mcore checkpoint of the teacher; without it the 'teacher' phase trains one."""
    generator_checkpoint: str | None = None
    """Initial generator weights for the first distillation phase (default: the teacher's), e.g. a
    Phase I result to run Phase II variants from."""
    generator_init: str = "high"
    """With a two-expert teacher (Wan2.2-A14B): the expert the generator starts from, 'high' (the high-noise
    expert: a one-step generator maps pure noise, its domain) or 'low'."""
    model_dir: str | None = None
    """The diffusers model folder the dataset was prepared with (pose-prepare --model): when set, sample
    videos are decoded by its VAE and written as MP4 (otherwise GIF grids of latent channels)."""
    vae_tile: int | None = None
    """Decode the sample videos in spatial VAE tiles of this many pixels (as ``pose-prepare --vae-tile``;
    e.g. 256 for 720p on a rank that also holds a 14B model); None: untiled."""
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    phase1: Phase1Config = field(default_factory=Phase1Config)
    phase2: Phase2Config = field(default_factory=Phase2Config)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    output_dir: str = "outputs/run"
    checkpoint_every: int = 0
    """Steps between checkpoints (0: only at the end of each phase)."""
    sample_every: int = 0
    log_every: int = 10
    tensorboard: bool = False
    wandb: bool = False
    """Log to Weights & Biases too (``pip install pose_mcore[wandb]``): the scalars of ``metrics.jsonl`` and the
    sample videos, one W&B run per ``output_dir`` that every resume continues (its id in ``wandb_run_id``)."""
    wandb_project: str = "pose_mcore"
    wandb_name: str | None = None
    """The W&B run's name (default: the output folder's name)."""
    wandb_mode: str = "auto"
    """``online``, ``offline`` (no network: ``wandb sync`` uploads it later) or ``auto`` (online when
    ``WANDB_API_KEY`` is set, else offline)."""
    precision: str = "auto"
    """'auto' (bf16 weights and autocast on CUDA, fp32 on the CPU), 'bf16', 'amp' (fp32 weights under bf16
    autocast, CUDA: the engine before bf16 weights, and diffusers' recipe) or 'fp32'."""
    check_replicas_every: int = 0
    """Every N steps (0: never), check after the step that every weight and reduced gradient that several ranks
    hold is bitwise the same on each (as Megatron-LM's ``--check-weight-hash-across-dp-replicas-interval``, over
    the tensor-parallel ranks too: a lost reduction shows there); a difference stops the run naming the tensors."""
    exit_signals: list[str] = field(default_factory=lambda: ["SIGTERM", "SIGUSR1"])
    """Signals that stop the run cleanly (as Megatron-LM's ``--exit-signal-handler``): every rank finishes its step,
    the run checkpoints it and exits with status 75, to be resumed (``[]``: the default actions)."""
    exit_duration_mins: float | None = None
    """Stop the same way once the run has used this much wall time (Megatron-LM's ``--exit-duration-in-mins``),
    keeping as margin the longest step and the longest checkpoint save seen."""
    max_nonfinite: int = 5
    """Consecutive non-finite steps (skipped) before the run stops."""
    deterministic: bool = False
    """Bit-reproducible runs on a GPU (as megatron's --deterministic-mode): deterministic algorithms and the
    math attention backend, whose backward has no atomics. Slower; CPU runs are deterministic anyway."""

    def bf16(self, device_type: str) -> bool:
        """Whether the run trains with bf16 weights and autocast (:class:`pose_mcore.pose.roles.Roles`) on a
        device of ``device_type``: ``precision=bf16``, or ``auto`` on CUDA."""
        return self.precision == "bf16" or (self.precision == "auto" and device_type == "cuda")

    def autocast(self, device_type: str) -> bool:
        """Whether forward passes run under bf16 autocast: with bf16 weights, or ``precision=amp``."""
        return self.precision == "amp" or self.bf16(device_type)


def _convert(value: Any, hint: Any, path: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise TrainConfigError(f"{path}: expected a mapping, got {value!r}")
        return _build(hint, value, path)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return None if value is None else _convert(value, args[0], path)
    if origin in (tuple, list) and not isinstance(value, list | tuple):
        raise TrainConfigError(f"{path}: expected a list, got {value!r}")
    if origin is tuple:
        if len(value) != len(typing.get_args(hint)):
            raise TrainConfigError(f"{path}: expected {len(typing.get_args(hint))} values, got {value!r}")
        return tuple(_convert(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, typing.get_args(hint),
                                                                                     strict=True)))
    if origin is list:
        (arg,) = typing.get_args(hint)
        return [_convert(v, arg, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is Any:
        return value
    try:
        return _scalar(value, hint)
    except (TypeError, ValueError, KeyError) as e:
        raise TrainConfigError(f"{path}: cannot use {value!r} as {getattr(hint, '__name__', hint)}") from e


def _scalar(value: Any, hint: type) -> Any:
    """``value`` as ``hint`` without silent loss: no 2.5 -> 2 for an int, no True -> 1 for a number
    (YAML reads ``1e-3`` as a string, so numbers may come as text)."""
    if hint is bool:
        if isinstance(value, str):
            return {"true": True, "false": False}[value.lower()]
        if not isinstance(value, bool):
            raise TypeError(value)
        return value
    if isinstance(value, bool) and hint in (int, float):
        raise TypeError(value)
    if hint is int and isinstance(value, float):
        raise TypeError(value)
    if hint is str and not isinstance(value, str):
        raise TypeError(value)
    return hint(value)


def _build(cls: type, values: dict[str, Any], path: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        where = f" in {path}" if path else ""
        known = ", ".join(sorted(names))
        raise TrainConfigError(f"unknown config key(s){where}: {', '.join(unknown)} (known: {known})")
    return cls(**{k: _convert(v, hints[k], f"{path}.{k}" if path else k) for k, v in values.items()})


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for key in keys[:-1]:
        tree = tree.setdefault(key, {})
        if not isinstance(tree, dict):
            raise TrainConfigError(f"override {dotted}: {key} is not a section")
    tree[keys[-1]] = value


def load_train_config(path: str | Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML file (or the defaults) plus ``key.path=value`` overrides."""
    tree: dict[str, Any] = {}
    if path is not None:
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as e:
            raise TrainConfigError(f"{path}: cannot read the config ({e})") from e
        except yaml.YAMLError as e:
            raise TrainConfigError(f"{path}: not valid YAML ({e})") from e
    for item in overrides or []:
        if "=" not in item:
            raise TrainConfigError(f"override {item!r}: expected key.path=value")
        key, text = item.split("=", 1)
        _set_path(tree, key.strip(), yaml.safe_load(text))
    return _build(TrainConfig, tree)


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
