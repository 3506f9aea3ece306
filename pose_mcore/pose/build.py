"""The roles and the phase object of one named phase, from a run's config: what the trainer runs and
what the memory model traces."""

from __future__ import annotations

from collections.abc import Callable

import torch

from pose_mcore.config.train import PHASES, TrainConfig
from pose_mcore.engine.ddp import release
from pose_mcore.engine.optimizer import Engine
from pose_mcore.parallel.state import seed_everything
from pose_mcore.pose.conditioning import Conditioner, image_token_dim
from pose_mcore.pose.phase import Phase
from pose_mcore.pose.phase1 import Phase1
from pose_mcore.pose.phase2 import Phase2
from pose_mcore.pose.roles import Roles, frozen
from pose_mcore.pose.teacher import TeacherPhase


def build_phase(name: str, config: TrainConfig, teacher: torch.nn.Module, conditioner: Conditioner,
                device: torch.device, previous: Roles | None = None,
                init_generator: Callable[[Roles], None] | None = None, bf16: bool = False,
                autocast: bool | None = None) -> tuple[Roles, Phase]:
    """Roles and phase for ``name`` (one of :data:`PHASES`). Phase II takes over ``previous`` (Phase I's
    roles) or, without them, builds the roles Phase I would have handed over. ``init_generator`` sets a
    new generator's weights (e.g. from ``generator_checkpoint``). ``bf16``: bf16 weights for the roles that
    allow it (:class:`Roles`); ``autocast``: bf16 autocast of the forward passes (default: with bf16).
    New weights (LoRA, head) are drawn from the phase's own seed, so a phase starts the same whatever ran
    before it in this process (a run resumed at another layout, where the RNG states of the interrupted one
    do not apply)."""
    seed = config.seed + 1000 * PHASES.index(name)
    seed_everything(seed)
    init = init_generator or (lambda roles: None)
    engine = Engine(config.distributed_optimizer, config.overlap_grad_reduce)
    dtype = torch.bfloat16 if bf16 else torch.float32
    roles, phase = _build(name, config, teacher, conditioner, device, previous, init, engine, dtype, seed)
    phase.bf16 = bf16 if autocast is None else autocast
    trained = {id(m) for opt in phase.optimizers().values() for m in opt.modules}
    for role in roles.named_roles().values():
        if id(role) not in trained:  # what an earlier phase trained and this one does not (Phase I's fake score)
            release(frozen(role))
    return roles, phase


def _build(name: str, config: TrainConfig, teacher: torch.nn.Module, conditioner: Conditioner,
           device: torch.device, previous: Roles | None, init: Callable[[Roles], None], engine: Engine,
           dtype: torch.dtype, seed: int) -> tuple[Roles, Phase]:
    if name == "teacher":  # the generator alone: no frozen base, no fake score
        roles = Roles(teacher, with_base=False, dtype=dtype)
        return roles, TeacherPhase(roles, conditioner, config.teacher, seed, device, engine)
    if name == "phase1":
        roles = Roles(teacher, config.phase1.lora_rank, config.phase1.lora_alpha, dtype=dtype,
                      generator_init=config.generator_init)
        init(roles)
        return roles, Phase1(roles, conditioner, config.phase1, seed, device, engine)
    if previous is None:
        primed = "phase1" in config.phases
        previous = Roles(teacher, config.phase1.lora_rank, config.phase1.lora_alpha, with_fake=primed, dtype=dtype,
                         generator_init=config.generator_init)
        init(previous)
    model = conditioner.config
    return previous, Phase2(previous, conditioner, config.phase2, seed, device, model.text_dim,
                            image_token_dim(model), engine)
