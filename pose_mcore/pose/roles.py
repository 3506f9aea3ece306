"""The model roles of POSE and how they share weights.

- ``generator``: initialised from the teacher, fully trained (or only its linear layers:
  :func:`train_generator`).
- ``base``: ONE frozen copy of the teacher carrying a zero-initialised LoRA: with the adapter off it
  is the real score (the teacher), with it on the fake score. Only the LoRA trains.
- ``ema``: exponential moving average of the generator; in Phase II the discriminator backbone.
- ``head``: the discriminator head (the only trained discriminator part, unless the backbone mode
  is ``full``).

Discriminator backbone modes (paper Table 3): ``ema`` (default, no second trained backbone),
``frozen`` (the teacher weights: the base with LoRA off), ``full`` (a separately trained copy).

A two-expert teacher (Wan2.2-A14B, :class:`Experts`): the base is the two experts, each with its own LoRA, so
the real and the fake score of a sample are its timestep's expert (no third or fourth copy); the generator
starts from one expert (``generator_init``); ``frozen`` is the high-noise expert.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from megatron.core import tensor_parallel
from torch import nn

from pose_mcore.models.experts import EXPERTS, Experts
from pose_mcore.models.features import unused_by_output
from pose_mcore.models.registry import cast_weights, clone_model
from pose_mcore.pose.lora import add_lora, lora_enabled

BACKBONE_MODES = ("ema", "frozen", "full")
GENERATOR_PARAMS = ("all", "linears")
GENERATOR_INITS = EXPERTS
LINEAR_TYPES = (nn.Linear, tensor_parallel.ColumnParallelLinear, tensor_parallel.RowParallelLinear)


def frozen(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def lora_carried(module: nn.Module) -> Iterator[nn.Parameter]:
    """The weights and biases of ``module``'s linear layers (``nn.Linear`` and megatron-core's column / row
    parallel ones): what a LoRA against the teacher carries in diffusers (factor pairs and ``lora_B.bias``).
    Norms, modulation tables and the patch embedding are left out: diffusers drops their differences."""
    for m in module.modules():
        if isinstance(m, LINEAR_TYPES):
            yield from m.parameters(recurse=False)


def train_generator(generator: nn.Module, which: str) -> None:
    """Mark what of the generator trains: ``all`` of it, or only its ``linears`` (:func:`lora_carried`), so that
    an exported LoRA reproduces it exactly in diffusers; never what cannot change its output
    (:func:`unused_by_output`)."""
    if which not in GENERATOR_PARAMS:
        raise ValueError(f"generator_params {which!r} must be one of {GENERATOR_PARAMS}")
    carried = {id(p) for p in lora_carried(generator)}
    dead = {id(p) for p in unused_by_output(generator)}
    for p in generator.parameters():
        p.requires_grad_((which == "all" or id(p) in carried) and id(p) not in dead)


class Roles(nn.Module):
    """Holds the roles as submodules, so one ``state_dict`` covers all of them.

    ``with_base=False`` (the teacher phase, which trains the generator alone): no base at all, and the generator
    is the whole teacher (both experts of a two-expert one); otherwise a two-expert teacher's generator is its
    ``generator_init`` expert.

    Weights: the generator, the base (its LoRA included) and a trained discriminator backbone in ``dtype``
    (bf16 on a GPU, as megatron trains: the optimiser keeps fp32 main weights of what trains, so the frozen
    base costs 2 bytes per weight); the EMA always in fp32, so that a decay of 0.995 moves it by 0.005 of the
    difference each step, far below bf16's resolution (2**-8 of the weight); the head in fp32 (small)."""

    def __init__(self, teacher: nn.Module, lora_rank: int = 8, lora_alpha: float = 8.0, with_fake: bool = True,
                 with_ema: bool = False, dtype: torch.dtype = torch.float32, with_base: bool = True,
                 generator_init: str = "high") -> None:
        super().__init__()
        self.dtype = dtype
        start = getattr(teacher, generator_init) if isinstance(teacher, Experts) and with_base else teacher
        self.generator = cast_weights(clone_model(start), dtype)
        train_generator(self.generator, "all")
        self.base = cast_weights(frozen(clone_model(teacher)), dtype) if with_base else None
        if with_fake and with_base:
            add_lora(self.base, lora_rank, lora_alpha)
            for expert in (self.base.high, self.base.low) if isinstance(self.base, Experts) else (self.base,):
                for p in unused_by_output(expert):  # their adapters could not change the fake score
                    p.requires_grad_(False)
        self.ema = frozen(clone_model(self.generator)).eval() if with_ema else None  # fp32: clone_model's
        self.head: nn.Module | None = None
        self.disc_backbone: nn.Module | None = None

    def named_roles(self) -> dict[str, nn.Module]:
        """The roles that exist, by name (what a checkpoint holds and the memory model lists)."""
        named = {"generator": self.generator, "base": self.base, "ema": self.ema, "head": self.head,
                 "disc_backbone": self.disc_backbone}
        return {k: v for k, v in named.items() if v is not None}

    @contextmanager
    def real(self) -> Iterator[nn.Module]:
        """The teacher (the base with its adapter off)."""
        with lora_enabled(self.base, False):
            yield self.base

    @contextmanager
    def fake(self) -> Iterator[nn.Module]:
        """The fake score (the base with its adapter on)."""
        with lora_enabled(self.base, True):
            yield self.base

    def attach_discriminator(self, head: nn.Module, mode: str) -> None:
        """Phase II: set the head and the backbone mode (``ema`` needs ``with_ema``)."""
        if mode not in BACKBONE_MODES:
            raise ValueError(f"discriminator backbone mode {mode!r} must be one of {BACKBONE_MODES}")
        self.head = head
        self.backbone_mode = mode
        if mode == "full":
            self.disc_backbone = cast_weights(clone_model(self.generator), self.dtype)
        if mode == "ema" and self.ema is None:
            self.ema = frozen(clone_model(self.generator)).eval()

    @contextmanager
    def backbone(self) -> Iterator[nn.Module]:
        """The discriminator backbone for the current mode."""
        if self.backbone_mode == "ema":
            yield self.ema
        elif self.backbone_mode == "frozen":
            with self.real() as teacher:
                yield teacher.high if isinstance(teacher, Experts) else teacher
        else:
            yield self.disc_backbone

    @torch.no_grad()
    def update_ema(self, decay: float) -> None:
        """``ema = decay * ema + (1 - decay) * generator``."""
        if self.ema is None:
            return
        for e, g in zip(self.ema.parameters(), self.generator.parameters(), strict=True):
            e.lerp_(g.detach().to(e.dtype), 1 - decay)
