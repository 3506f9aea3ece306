"""Per-rank memory of a DiT training step, traced rather than estimated by hand.

The real model and phase code runs on fake tensors (``torch._subclasses.FakeTensorMode``: shapes,
dtypes and aliasing, no storage) under :class:`LiveBytes`, a dispatch mode that counts the bytes of
the distinct live storages: the states that exist before a step (weights of every role, optimiser
states, the batch) and what the step allocates until it frees it. (torch's ``MemTracker`` does this
by module, but refuses a model called twice in one step, which every POSE phase does.)

A tensor-parallel layout of the full-size architecture is traced in one CPU process on
a fake process group (``torch.testing._internal.distributed.fake_pg``: collectives return tensors
of the right shapes), so what is counted is what rank 0 of that layout holds.

The same tracker on real CPU tensors measures a real step with the same accounting (the bytes of
live tensor storages, allocator caching excluded); a test holds the trace equal to that measurement
on small configurations. Tracing a 14B model through every block costs minutes on the CPU;
:func:`step_memory` can instead trace two depths and extrapolate linearly in the number of blocks
(the blocks are identical, so parameters, gradients and the activations kept per block grow by the
same amount per block; a test checks it against a full trace at small sizes). It is an estimate: when
the moment of the peak moves with depth (forward at one block, end of backward at sixty) the
extrapolated peak is too low, so it is never reported below twice the states (weights + gradients).

Not traced (explicit terms a caller adds): allocator fragmentation and caching, NCCL buffers, CUDA
context and kernel workspaces.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from pose_mcore.config.base import RECOMPUTE_EVERY_BLOCK, VideoDiTConfig
from pose_mcore.config.hunyuan15 import HunyuanVideo15Config
from pose_mcore.config.train import TrainConfig
from pose_mcore.models.registry import family_of_config
from pose_mcore.parallel.cpu_compat import apply_cpu_compat, cpu_autocast_backward

if TYPE_CHECKING:
    from pose_mcore.pose.phase import Phase
    from pose_mcore.pose.roles import Roles

KINDS = ("states", "step")


@dataclass(frozen=True)
class StepMemory:
    """Bytes on one rank at the step's peak: ``states``, what existed before the step and lives through
    it (every role's weights, optimiser states, the batch); ``step``, what the step itself had allocated
    and not yet freed at that moment (activations, gradients, temporaries, communication buffers)."""

    states: int
    step: int
    total: int
    trainable: int = 0
    """Bytes of the gradients the step holds at once at the end of a backward (a lower bound of its peak
    beside the states)."""
    flops: int = 0
    """Matmul and attention FLOPs of the step on this rank (torch's FLOP counter; recomputed forwards
    included: what the hardware executes)."""
    by_role: tuple[tuple[str, int], ...] = ()
    """The states by what holds them (a role's weights, gradient buffers, main weights, Adam states, the
    batch), at the start of the step."""

    def gib(self) -> dict[str, float]:
        return {k: getattr(self, k) / 2**30 for k in (*KINDS, "total")}


class LiveBytes(TorchDispatchMode):
    """Counts the bytes of the distinct storages alive: those of ``existing`` tensors, and every storage an
    op creates while the mode is active, until it is freed; keeps the peak. Views share a storage and are
    counted once. Works the same on fake tensors (no data) and real ones."""

    def __init__(self, existing: list[torch.Tensor]) -> None:
        super().__init__()
        self._live: dict[int, tuple[int, str, weakref.ref]] = {}
        self.current = {"states": 0, "step": 0}
        for t in existing:
            self._add(t, "states")
        self.peak = StepMemory(self.current["states"], 0, self.current["states"])

    def _add(self, t: torch.Tensor, kind: str) -> None:
        storage = t.untyped_storage()
        key = storage._cdata  # the storage itself (Python wrappers of one storage may differ)
        if key in self._live:
            return
        n = storage.nbytes()
        self._live[key] = (n, kind, weakref.ref(storage, lambda _, key=key: self._free(key)))
        self.current[kind] += n

    def _free(self, key: int) -> None:
        n, kind, _ = self._live.pop(key)
        self.current[kind] -= n

    def __torch_dispatch__(self, func: object, types: object, args: tuple = (), kwargs: dict | None = None) -> object:
        if getattr(func, "namespace", None) == "c10d":
            return _on_copies(func, args, kwargs or {})
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            # a view or an in-place result shares an input's storage: not an allocation
            if isinstance(t, torch.Tensor) and t.untyped_storage()._cdata not in inputs:
                self._add(t, "step")
        total = self.current["states"] + self.current["step"]
        if total > self.peak.total:
            self.peak = StepMemory(self.current["states"], self.current["step"], total)
        return out


def _on_copies(func: Callable[..., object], args: tuple, kwargs: dict) -> object:
    """Runs the collective ``func`` on copies of its tensors, waits for it and writes the results back.
    A gloo worker thread drops its references to a collective's tensors only after the caller has resumed,
    so a temporary the program has already dropped (a norm's all-reduced sum) could outlive it by a few ops,
    by chance of scheduling: on copies the count is the program's own, the same on every machine. (The
    copies are not counted: the mode is off inside its handler.) Fake tensors go through as they are."""
    from torch._subclasses.fake_tensor import FakeTensor

    flat, spec = tree_flatten((args, kwargs))
    if any(isinstance(t, FakeTensor) for t in flat):
        return func(*args, **kwargs)
    copies = [t.clone() if isinstance(t, torch.Tensor) else t for t in flat]
    copy_args, copy_kwargs = tree_unflatten(copies, spec)
    flat_out, out_spec = tree_flatten(func(*copy_args, **copy_kwargs))
    for item in flat_out:
        if hasattr(item, "wait"):
            item.wait()
    originals = {}
    for copy, original in zip(copies, flat, strict=True):
        if copy is not original:
            original.copy_(copy)
            originals[id(copy)] = original
    return tree_unflatten([originals.get(id(item), item) for item in flat_out], out_spec)


def _tensors_of(objects: list[object]) -> list[torch.Tensor]:
    """Parameters, buffers and gradients of modules; states of torch optimisers; tensors as they are."""
    out: list[torch.Tensor] = []
    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            out += [p for p in obj.parameters()] + [p.grad for p in obj.parameters() if p.grad is not None]
            out += list(obj.buffers())
        elif isinstance(obj, torch.optim.Optimizer):
            out += [v for state in obj.state.values() for v in state.values() if isinstance(v, torch.Tensor)]
        elif isinstance(obj, torch.Tensor):
            out.append(obj)
        elif isinstance(obj, dict):
            out += _tensors_of(list(obj.values()))
        elif isinstance(obj, list | tuple):
            out += _tensors_of(list(obj))
    return out


@contextlib.contextmanager
def fake_world(tensor_parallel_size: int, world_size: int | None = None, context_parallel_size: int = 1
               ) -> Iterator[None]:
    """megatron-core's parallel state over a fake process group of ``world_size`` ranks (this process is
    rank 0), for tracing a layout without the machines; restores nothing it did not create."""
    from torch.testing._internal.distributed.fake_pg import FakeStore

    if dist.is_initialized() or parallel_state.model_parallel_is_initialized():
        raise RuntimeError("fake_world needs a process without torch.distributed initialised")
    apply_cpu_compat()
    dist.init_process_group("fake", store=FakeStore(), rank=0,
                            world_size=world_size or tensor_parallel_size * context_parallel_size)
    try:
        parallel_state.initialize_model_parallel(tensor_model_parallel_size=tensor_parallel_size,
                                                 context_parallel_size=context_parallel_size,
                                                 create_gloo_process_groups=False)
        tensor_parallel.model_parallel_cuda_manual_seed(1234)
        yield
    finally:
        parallel_state.destroy_model_parallel()
        dist.destroy_process_group()


GLYPH_TOKENS, SIGLIP_TOKENS = 256, 729
"""HunyuanVideo-1.5's pipelines: ByT5 tokens of the glyph text, SigLIP-384's 27 x 27 image tokens."""


def text_tokens(cfg: VideoDiTConfig, text_len: int | None) -> int:
    """``text_len``, or the pipelines' LLM text length: 1000 for HunyuanVideo-1.5 (its ``tokenizer_max_length``),
    else 512 (Wan's; HunyuanVideo's 256 counted as 512)."""
    return text_len or (1000 if isinstance(cfg, HunyuanVideo15Config) else 512)


def model_inputs(cfg: VideoDiTConfig, batch: int, frames: int, height: int, width: int, text_len: int | None = None,
                 dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random inputs of a model's forward for a latent video of ``frames x height x width`` (the
    shapes real pipelines use: :func:`text_tokens`, CLIP's 257 image tokens for Wan I2V, HunyuanVideo-1.5's 256
    glyph and, for I2V, 729 SigLIP tokens)."""
    name = family_of_config(cfg).name
    text_len = text_tokens(cfg, text_len)
    latents = torch.randn(batch, cfg.in_channels, frames, height, width, dtype=dtype)
    text = torch.randn(batch, text_len, cfg.text_dim, dtype=dtype)
    t = torch.full((batch,), 500.0)
    if name == "hunyuan15":
        out = {"hidden_states": latents, "timestep": t, "encoder_hidden_states": text,
               "encoder_attention_mask": torch.ones(batch, text_len, dtype=torch.long),
               "encoder_hidden_states_2": torch.randn(batch, GLYPH_TOKENS, cfg.glyph_dim, dtype=dtype),
               "encoder_attention_mask_2": torch.ones(batch, GLYPH_TOKENS, dtype=torch.long)}
        if cfg.task_type == "i2v":
            out["image_embeds"] = torch.randn(batch, SIGLIP_TOKENS, cfg.image_dim, dtype=dtype)
        return out
    if name == "wan":
        out = {"hidden_states": latents, "timestep": t, "encoder_hidden_states": text}
        if cfg.image_dim is not None:
            out["encoder_hidden_states_image"] = torch.randn(batch, 257, cfg.image_dim, dtype=dtype)
        return out
    out = {"hidden_states": latents, "timestep": t, "encoder_hidden_states": text,
           "encoder_attention_mask": torch.ones(batch, text_len, dtype=torch.long),
           "pooled_projections": torch.randn(batch, cfg.pooled_dim, dtype=dtype)}
    if cfg.guidance_embeds:
        out["guidance"] = torch.full((batch,), 6000.0)
    return out


def bytes_by_name(named: dict[str, object]) -> tuple[tuple[str, int], ...]:
    """Bytes of the distinct storages of each named object (a storage shared by two counts for the first)."""
    seen: set[int] = set()
    out = []
    for name, obj in named.items():
        total = 0
        for t in _tensors_of([obj]):
            storage = t.untyped_storage()
            if storage._cdata not in seen:
                seen.add(storage._cdata)
                total += storage.nbytes()
        out.append((name, total))
    return tuple(out)


def _tracked(setup: Callable[[], tuple[dict[str, object], Callable[[], object]]], fake: bool) -> StepMemory:
    """Peak live bytes while running the work that ``setup`` returns; ``setup`` builds what exists before
    (models, optimisers, the batch: returned by name, counted as states) on fake or real tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    count_cpu_attention()
    # megatron-core keeps the sequence-parallel all-gather buffer between calls: a fresh one per trace, so
    # that it is allocated (and counted) inside this trace and never belongs to another trace's fake mode.
    parallel_state.destroy_global_memory_buffer()
    parallel_state._set_global_memory_buffer()
    with (FakeTensorMode() if fake else contextlib.nullcontext(), _host_scalars(), _unchanged_to_is_noop(),
          _in_place_data_parallel() if fake else contextlib.nullcontext()):
        named, work = setup()
        existing = list(named.values())
        by_role = bytes_by_name(named)  # before the work: its gradients are not states
        with LiveBytes(_tensors_of(existing)) as live:
            work()
        with FlopCounterMode(display=False) as flops:  # the work once more: the counter must not touch the bytes
            work()
    return dataclasses.replace(live.peak, trainable=_gradient_floor(existing), flops=flops.get_total_flops(),
                               by_role=by_role)


def _gradient_floor(existing: list[object]) -> int:
    """Bytes of the gradients that the end of a backward holds beside the states: every trainable parameter's,
    except those whose gradients accumulate in DDP's buffers (``main_grad``), which are states already."""
    params = {id(p): p for m in existing if isinstance(m, torch.nn.Module) for p in m.parameters()
              if p.requires_grad and not hasattr(p, "main_grad")}
    return sum(p.numel() * p.element_size() for p in params.values())


@contextlib.contextmanager
def _in_place_data_parallel() -> Iterator[None]:
    """Inside a fake trace, DDP's gradient reduce-scatter / all-reduce and the distributed optimizer's parameter
    all-gather do nothing (fake tensors have no collective kernels). They work in place on DDP's buffers, which
    are counted as states, so they allocate nothing the trace would count; NCCL's own buffers are headroom."""
    from megatron.core.distributed.param_and_grad_buffer import _ParamAndGradBucketGroup as BucketGroup

    names = ("start_grad_sync", "finish_grad_sync", "start_param_sync", "finish_param_sync")
    originals = {n: getattr(BucketGroup, n) for n in names}
    for n in names:
        setattr(BucketGroup, n, lambda self, *args, **kwargs: None)
    try:
        yield
    finally:
        for n, f in originals.items():
            setattr(BucketGroup, n, f)


@contextlib.contextmanager
def _host_scalars() -> Iterator[None]:
    """Inside a trace, a fake tensor read on the host (``.item()``, ``float``, ``int``, ``bool``: the losses a
    step logs, its finite-gradient check, a kernel seed) reads as 1 / True: such values never change which
    tensors a step allocates, and a fake tensor has no value."""
    from torch._subclasses.fake_tensor import FakeTensor

    names = {"item": 1.0, "__float__": 1.0, "__int__": 1, "__bool__": True}
    originals = {n: getattr(torch.Tensor, n) for n in names}

    def reading(name: str) -> Callable[..., object]:
        def read(self: torch.Tensor, *args: object) -> object:
            return names[name] if isinstance(self, FakeTensor) else originals[name](self, *args)
        return read

    for n in names:
        setattr(torch.Tensor, n, reading(n))
    try:
        yield
    finally:
        for n, f in originals.items():
            setattr(torch.Tensor, n, f)


@contextlib.contextmanager
def _unchanged_to_is_noop() -> Iterator[None]:
    """``module.to(device)`` onto the device its tensors are on returns it unchanged: on fake tensors
    torch's ``_apply`` would try to swap each tensor with itself, and fail."""
    original = torch.nn.Module.to

    def to(self: torch.nn.Module, *args: object, **kwargs: object) -> torch.nn.Module:
        device = kwargs.get("device", args[0] if args and isinstance(args[0], (str, torch.device)) else None)
        if (device is not None and set(kwargs) <= {"device"} and len(args) <= 1
                and all(t.device == torch.device(device) for t in [*self.parameters(), *self.buffers()])):
            return self
        return original(self, *args, **kwargs)

    torch.nn.Module.to = to
    try:
        yield
    finally:
        torch.nn.Module.to = original


def trace(build: Callable[[], torch.nn.Module], make_inputs: Callable[[], dict[str, torch.Tensor]],
          fake: bool = True) -> StepMemory:
    """Peak live bytes of one forward and backward (loss: mean square of the output) of the model that
    ``build`` makes, every parameter trainable: on fake tensors (``fake=True``) or real ones."""
    def setup() -> tuple[dict[str, object], Callable[[], object]]:
        model = build()
        inputs = make_inputs()
        return {"model": model, "inputs": inputs}, lambda: model(**inputs).sample.float().square().mean().backward()

    return _tracked(setup, fake)


def _build(cfg: VideoDiTConfig, dtype: torch.dtype) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        before = torch.get_default_dtype()
        torch.set_default_dtype(dtype)  # torch's own layers (the patch embedding) in the step's dtype
        try:
            return family_of_config(cfg).build(cfg)
        finally:
            torch.set_default_dtype(before)
    return build


def step_memory(cfg: VideoDiTConfig, batch: int, frames: int, height: int, width: int, recompute: bool = True,
                dtype: torch.dtype = torch.bfloat16, extrapolate: bool = True) -> StepMemory:
    """Rank 0's peak bytes for one forward and backward of the model of ``cfg`` (its TP size; the
    process group must exist, e.g. :func:`fake_world`), weights and activations in ``dtype``, every
    block recomputed in backward if ``recompute``. ``extrapolate``: trace with one block of each kind,
    then with two of one kind at a time, and extend linearly to the model's depth (else trace it whole)."""
    extra = dict(RECOMPUTE_EVERY_BLOCK) if recompute else {}

    def at(depths: dict[str, int]) -> StepMemory:
        c = dataclasses.replace(cfg, params_dtype=dtype, **extra, **depths)
        return trace(_build(c, dtype), lambda: model_inputs(c, batch, frames, height, width, dtype=dtype))

    return _over_depth(cfg, at, extrapolate)


def depth_fields(cfg: VideoDiTConfig) -> list[str]:
    """The config's block counts (Wan: ``num_layers``; HunyuanVideo: also ``num_single_layers``)."""
    return [f for f in ("num_layers", "num_single_layers") if hasattr(cfg, f)]


def _over_depth(cfg: VideoDiTConfig, at: Callable[[dict[str, int]], StepMemory], extrapolate: bool) -> StepMemory:
    """``at({})`` (the model's own depth), or: ``at`` one block of each kind and two of one kind at a time,
    extended linearly to ``cfg``'s depth."""
    if not extrapolate:
        return at({})
    ones = {f: 1 for f in depth_fields(cfg)}
    base = at(ones)
    deeper = {f: at({**ones, f: 2}) for f in depth_fields(cfg)}

    def extend(value: Callable[[StepMemory], float]) -> float:
        return value(base) + sum((getattr(cfg, f) - 1) * (value(m) - value(base)) for f, m in deeper.items())

    fields = ("states", "step", "total", "trainable", "flops")
    values = {k: extend(lambda m, k=k: getattr(m, k)) for k in fields}
    # The peak of a shallow trace can sit in the forward while the deep model's sits at the end of backward
    # (the moment differs, so the extrapolated sum can fall short): the end of a backward holds the states and
    # the gradients of one optimiser's parameters, a lower bound of the peak.
    values["total"] = max(values["total"], values["states"] + values["trainable"])
    values["step"] = values["total"] - values["states"]
    roles = tuple((name, math.ceil(extend(lambda m, name=name: dict(m.by_role).get(name, 0))))
                  for name, _ in base.by_role)
    return StepMemory(*(math.ceil(values[k]) for k in fields), by_role=roles)


def train_batch(cfg: VideoDiTConfig, batch: int, frames: int, height: int, width: int,
                text_len: int | None = None) -> dict[str, torch.Tensor]:
    """A data batch as a prepared dataset gives it: every field the model is conditioned on
    (:func:`required_fields`), :func:`text_tokens` text tokens, image states of CLIP ViT-H/14 at 224 px (257
    tokens) or of SigLIP (HunyuanVideo-1.5: 729), glyph text of 256 tokens."""
    from pose_mcore.pose.conditioning import required_fields

    text_len = text_tokens(cfg, text_len)
    latents = torch.randn(batch, cfg.out_channels, frames, height, width)
    out = {"latents": latents, "text": torch.randn(batch, text_len, cfg.text_dim),
           "first_frame": latents[:, :, :1].clone()}
    fields = required_fields(cfg)
    if "text_mask" in fields:
        out["text_mask"] = torch.ones(batch, text_len, dtype=torch.long)
    if "pooled" in fields:
        out["pooled"] = torch.randn(batch, cfg.pooled_dim)
    if "glyph" in fields:
        out["glyph"] = torch.randn(batch, GLYPH_TOKENS, cfg.glyph_dim)
        out["glyph_mask"] = torch.ones(batch, GLYPH_TOKENS, dtype=torch.long)
    if "image_states" in fields:
        image_tokens = SIGLIP_TOKENS if isinstance(cfg, HunyuanVideo15Config) else 257
        out["image_states"] = torch.randn(batch, image_tokens, cfg.image_dim)
    if "condition" in fields:
        out["condition"] = torch.randn(batch, cfg.in_channels - cfg.out_channels, frames, height, width)
    return out


def phase_states(roles: Roles, phase: Phase) -> dict[str, object]:
    """What a phase holds between its steps, by name: each role, and each optimiser's gradient buffers, fp32
    main weights (where the model's are not fp32) and Adam states (for :func:`bytes_by_name`)."""
    named: dict[str, object] = dict(roles.named_roles())
    for name, o in phase.optimizers().items():
        named[f"grads {name}"] = [buffer.grad_data for ddp in o.ddps for buffer in ddp.buffers]
        mains = o.main_copies()
        if mains:
            named[f"main {name}"] = mains
        named[f"adam {name}"] = o.adam
    return named


def phase_step_memory(config: TrainConfig, phase: str, frames: int, height: int, width: int,
                      text_len: int | None = None,
                      device_type: str = "cuda", fake: bool = True, extrapolate: bool = False) -> StepMemory:
    """Rank 0's peak bytes during one optimiser step of ``phase`` (teacher, phase1, phase2) of the run
    ``config`` describes: the trainer's own roles, optimisers and phase code (:func:`build_phase`; the
    teacher the roles were cloned from is dropped, as the trainer drops it), Adam states allocated (the
    step traced is the second), the weights and autocast that ``config.precision`` gives on a device of
    ``device_type`` (``auto`` on CUDA, the GPU engine: bf16 weights (:class:`Roles`) and forward passes under bf16
    autocast; ``amp``: fp32 weights under autocast; ``fp32``: neither), one micro-batch of
    ``config.micro_batch_size`` latent videos ``frames x height x width`` (accumulation steps add no memory:
    gradients accumulate in DDP's buffers, counted as states). The
    process group must exist (:func:`fake_world`, or a real one with ``fake=False``). ``extrapolate``: as
    in :func:`step_memory`."""
    from pose_mcore.models.registry import family_of_preset
    from pose_mcore.pose.build import build_phase
    from pose_mcore.pose.conditioning import Conditioner, negative_fields

    tp = parallel_state.get_tensor_model_parallel_world_size()
    layout = dict(tensor_model_parallel_size=tp, context_parallel_size=parallel_state.get_context_parallel_world_size(),
                  sequence_parallel=tp > 1)
    family = family_of_preset(config.preset)
    bf16, autocast = config.bf16(device_type), config.autocast(device_type)

    def at(depths: dict[str, int], features: list[int] | None = None) -> StepMemory:
        """A trace at ``depths``; in Phase II the head reads block outputs ``features`` (default: the last
        block only, so that a deeper trace adds blocks, not features)."""
        run = dataclasses.replace(config, model={**config.model, **depths})
        if depths and phase == "phase2":
            blocks = sum(run.model.get(f, getattr(cfg, f)) for f in depth_fields(cfg))
            run = dataclasses.replace(run, phase2=dataclasses.replace(
                run.phase2, feature_layers=features if features is not None else [blocks - 1]))
        model_cfg = family.make_config(config.preset, **{**layout, **run.model})  # model.sequence_parallel wins
        with cpu_autocast_backward(autocast):
            return _tracked(lambda: setup(run, model_cfg), fake)

    def setup(run: TrainConfig, model_cfg: VideoDiTConfig) -> tuple[dict[str, object], Callable[[], object]]:
        teacher = family.build(model_cfg)
        data = train_batch(model_cfg, run.micro_batch_size, frames, height, width, text_len)
        conditioner = Conditioner(model_cfg, negative={k: data[k][0] for k in negative_fields(model_cfg)})
        roles, step = build_phase(phase, run, teacher, conditioner, torch.device("cpu"), bf16=bf16, autocast=autocast)
        data["sample_index"] = torch.arange(run.micro_batch_size)
        step.step([data])  # the first step allocates the optimiser states
        named = phase_states(roles, step)
        named["batch"] = data
        return named, lambda: step.step([data])

    cfg = family.make_config(config.preset, **{**layout, **config.model})
    memory = _over_depth(cfg, at, extrapolate)
    if not (extrapolate and phase == "phase2"):
        return memory
    # The depth traces read one feature; each further feature layer of the run adds what a second one adds to
    # a two-block trace (the captured block output and the head's work on it).
    from pose_mcore.models.features import spread_layers

    n_features = len(config.phase2.feature_layers or spread_layers(sum(getattr(cfg, f) for f in depth_fields(cfg))))
    two = {**{f: 1 for f in depth_fields(cfg)}, depth_fields(cfg)[0]: 2}
    last = sum(two.values()) - 1  # HunyuanVideo: the last dual-stream block and the single-stream one
    one_feature, two_features = at(two, [last]), at(two, [last - 1, last])
    per_feature = {k: getattr(two_features, k) - getattr(one_feature, k) for k in ("states", "step", "total", "flops")}
    out = {k: getattr(memory, k) + (n_features - 1) * v for k, v in per_feature.items()}
    out["total"] = max(out["total"], out["states"] + memory.trainable)
    out["step"] = out["total"] - out["states"]
    one, two_ = dict(one_feature.by_role), dict(two_features.by_role)
    roles = tuple((name, math.ceil(n + (n_features - 1) * (two_.get(name, 0) - one.get(name, 0))))
                  for name, n in memory.by_role)
    return dataclasses.replace(memory, by_role=roles, **{k: math.ceil(v) for k, v in out.items()})


def count_cpu_attention() -> None:
    """torch's FLOP counter knows the CUDA attention kernels; give it the CPU one, with the same formulas."""
    from torch.utils import flop_counter

    def forward(q: tuple[int, ...], k: tuple[int, ...], v: tuple[int, ...], *_: object, **__: object) -> int:
        return flop_counter.sdpa_flop_count(q, k, v)

    def backward(grad: tuple[int, ...], q: tuple[int, ...], k: tuple[int, ...], v: tuple[int, ...], *_: object,
                 **__: object) -> int:
        return flop_counter.sdpa_backward_flop_count(grad, q, k, v)

    aten = torch.ops.aten
    for op, formula in ((aten._scaled_dot_product_flash_attention_for_cpu, forward),
                        (aten._scaled_dot_product_flash_attention_for_cpu_backward, backward)):
        if op not in flop_counter.flop_registry:
            flop_counter.register_flop_formula(op)(formula)


def model_flops(cfg: VideoDiTConfig, batch: int, frames: int, height: int, width: int, text_len: int | None = None
                ) -> dict[str, int]:
    """Model FLOPs of one forward and of one forward + backward of the model of ``cfg`` on rank 0 of its
    layout (matmuls and attention, counted by torch's FLOP counter on fake tensors; recomputation is not
    model work and is left out), and per module (``per_module``: forward FLOPs by module name)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    count_cpu_attention()
    with FakeTensorMode(), _host_scalars():
        c = dataclasses.replace(cfg, recompute_granularity=None, recompute_method=None, recompute_num_layers=None)
        model = _build(c, torch.float32)()
        inputs = model_inputs(c, batch, frames, height, width, text_len)
        with FlopCounterMode(display=False) as forward:
            out = model(**inputs).sample
        with FlopCounterMode(display=False) as backward:
            out.float().sum().backward()
    per_module = {name: sum(ops.values()) for name, ops in forward.get_flop_counts().items()}
    return {"forward": forward.get_total_flops(), "forward_backward": forward.get_total_flops()
            + backward.get_total_flops(), "per_module": per_module}
