"""Small phase set-ups shared by the phase tests and the layout tests' training-step script."""

from __future__ import annotations

import dataclasses

import torch
from devices import to_device
from megatron.core import parallel_state
from torch.utils.data import default_collate

from pose_mcore.config.train import OptimConfig, Phase1Config, Phase2Config, TeacherConfig
from pose_mcore.data.procedural import ProceduralConfig, ProceduralVideos
from pose_mcore.data.sampler import BatchStream
from pose_mcore.models.registry import family_of_preset
from pose_mcore.parallel.replicas import replica_mismatches
from pose_mcore.parallel.sharding import full_state_dict, gather_full, load_full_state_dict
from pose_mcore.parallel.state import run_device
from pose_mcore.pose.conditioning import Conditioner, image_token_dim
from pose_mcore.pose.phase1 import Phase1
from pose_mcore.pose.phase2 import Phase2
from pose_mcore.pose.roles import Roles
from pose_mcore.pose.teacher import TeacherPhase

PHASE1 = Phase1Config(fake_updates=2, optim_g=OptimConfig(lr=1e-3), optim_fake=OptimConfig(lr=1e-2), real_guidance=2.0)
PHASE2 = Phase2Config(head_dim=16, head_queries=4, head_heads=2, optim_g=OptimConfig(lr=1e-3, betas=(0.5, 0.999)),
                      optim_d=OptimConfig(lr=1e-3, betas=(0.5, 0.999)), ema_decay=0.9, r1_weight=0.5)


def batch_for(cfg, size: int = 2, frames: int = 3, height: int = 4, width: int = 6) -> dict[str, torch.Tensor]:
    """A procedural batch on this process's device (samples 0.. of a global batch)."""
    data = ProceduralVideos(ProceduralConfig.for_model(cfg, frames, height, width, size=2), 16, seed=5)
    batch = default_collate([data[i] for i in range(size)])
    batch["sample_index"] = torch.arange(size)
    return to_device(batch)


def phase1_setup(preset: str = "tiny-t2v", teacher_state=None, engine=None, dtype=torch.float32, **overrides):
    family = family_of_preset(preset)
    cfg = family.make_config(preset, **overrides)
    torch.manual_seed(0)
    teacher = family.build(cfg).to(run_device())
    if teacher_state is not None:
        load_full_state_dict(teacher, teacher_state)
    roles = Roles(teacher, lora_rank=4, lora_alpha=4, dtype=dtype)
    return roles, Phase1(roles, Conditioner(cfg, stand_ins=True), PHASE1, seed=3, device=run_device(), engine=engine), cfg


def phase2_setup(roles, cfg, backbone: str = "ema", head: str = "semantic", engine=None, **overrides):
    pcfg = Phase2Config(**{**PHASE2.__dict__, "backbone": backbone, "head": head, **overrides})
    torch.manual_seed(1)
    return Phase2(roles, Conditioner(cfg, stand_ins=True), pcfg, seed=4, device=run_device(), text_dim=cfg.text_dim,
                  image_dim=image_token_dim(cfg), engine=engine)


def global_batch(cfg, micro: int, accumulation: int, dp_rank: int = 0, dp_size: int = 1):
    """This rank's micro-batches of the first global batch of 4 procedural videos of 27 tokens (odd: padded
    under sequence parallelism), as the trainer's batch stream cuts it for the layout."""
    data = ProceduralVideos(ProceduralConfig.for_model(cfg, 3, 6, 6, size=2), 4, seed=5)
    return [to_device(b) for b in BatchStream(data, micro, accumulation, 11, dp_rank, dp_size).next()]


LAYOUT_CASES = {
    "wan-teacher": ("tiny-t2v", "teacher", {}),
    "wan-phase1": ("tiny-t2v", "phase1", {}),
    "wan-ema-semantic": ("tiny-t2v", "phase2", {}),
    "wan-frozen-semantic": ("tiny-t2v", "phase2", {"backbone": "frozen"}),
    "wan-full-semantic-feature-r1": ("tiny-t2v", "phase2", {"backbone": "full", "r1_on": "features"}),
    "wan-full-conv": ("tiny-t2v", "phase2", {"backbone": "full", "head": "conv"}),
    "wan-i2v-phase1": ("tiny-i2v", "phase1", {}),
    "wan-i2v-ema-semantic": ("tiny-i2v", "phase2", {}),
    "a14b-teacher": ("tiny-t2v-a14b", "teacher", {}),
    "a14b-phase1": ("tiny-t2v-a14b", "phase1", {"real_guidance_low": 1.5}),
    "a14b-frozen-semantic": ("tiny-t2v-a14b", "phase2", {"backbone": "frozen"}),
    "hunyuan-teacher": ("tiny-hunyuan-t2v", "teacher", {}),
    "hunyuan-phase1": ("tiny-hunyuan-t2v", "phase1", {}),
    "hunyuan-ema-semantic": ("tiny-hunyuan-t2v", "phase2", {}),
    "hunyuan-frozen-semantic": ("tiny-hunyuan-t2v", "phase2", {"backbone": "frozen"}),
    "hunyuan-full-semantic": ("tiny-hunyuan-t2v", "phase2", {"backbone": "full"}),
    "hunyuan-ema-conv": ("tiny-hunyuan-t2v", "phase2", {"head": "conv"}),
    "hunyuan15-teacher": ("tiny-hunyuan1.5-t2v", "teacher", {}),
    "hunyuan15-i2v-phase1": ("tiny-hunyuan1.5-i2v", "phase1", {}),
    "hunyuan15-i2v-ema-semantic": ("tiny-hunyuan1.5-i2v", "phase2", {}),
}
"""name -> (preset, phase, Phase I or Phase II settings): one step of every phase, each backbone mode and each head, of
every family (and Wan I2V: image conditions, the consistency loss; Wan2.2-A14B's two experts: a batch whose
samples take both experts, sparse gradients; HunyuanVideo-1.5: T2V's zero condition channels, I2V's SigLIP tokens
and condition latent), in the layout tests."""

TEACHER = TeacherConfig(optim=OptimConfig(lr=1e-3))


def whole_gradients(opt) -> dict[str, torch.Tensor]:
    """The reduced gradient of every parameter an optimiser trains, as whole tensors on every rank (its
    ``<role index>.<name>``): this rank's shards of the distributed optimizer summed over the data- and
    context-parallel ranks (each element lies in one shard), TP slices gathered."""
    spans: dict[str, list] = {}
    for p in opt.params:
        spans.setdefault(p.name, []).append(p)
    out = {}
    for index, ddp in enumerate(opt.ddps):
        for name, param in ddp.module.named_parameters():
            if not param.requires_grad:
                continue
            key = f"{index}.{name}"
            flat = torch.zeros(param.numel(), device=param.device)
            for p in spans.get(key, []):
                flat[p.span[0]:p.span[1]] = p.grad
            if opt.distributed and ddp.dp_cp_group.size() > 1:
                torch.distributed.all_reduce(flat, group=ddp.dp_cp_group)
            out[key] = gather_full(param, flat.view_as(param), name)
    return out


def layout_step(case: str, micro: int, accumulation: int, init: dict | None = None, engine=None,
                **model_overrides) -> dict:
    """One step of ``case`` (:data:`LAYOUT_CASES`) on the first global batch, every optimiser at its first
    step with the default Adam epsilon, from ``init``'s weights when given (whole tensors, as this function
    returns them under ``init.*``). Returns the metrics, each optimiser's reduced gradients
    (``grads.<optimiser>``), every role's whole weights before (``init.<role>``) and after (``after.<role>``)
    and the copies of weights and gradients that differ between the ranks holding them (``mismatches``)."""
    preset, name, settings = LAYOUT_CASES[case]
    family = family_of_preset(preset)
    cfg = family.make_config(preset, **model_overrides)
    torch.manual_seed(0)
    teacher = family.build(cfg).to(run_device())
    conditioner = Conditioner(cfg, stand_ins=True)
    if name == "teacher":
        roles = Roles(teacher, with_fake=False)
        phase = TeacherPhase(roles, conditioner, TEACHER, seed=2, device=run_device(), engine=engine)
    elif name == "phase1":
        roles = Roles(teacher, lora_rank=4, lora_alpha=4)
        phase = Phase1(roles, conditioner, dataclasses.replace(PHASE1, fake_updates=1, **settings), seed=3,
                       device=run_device(), engine=engine)
    else:
        roles = Roles(teacher, lora_rank=4, lora_alpha=4)
        phase = phase2_setup(roles, cfg, engine=engine, **settings)
    held = roles.named_roles()
    if init is not None:
        for role, module in held.items():
            if role == "head":
                module.load_state_dict(init["init.head"])
            else:
                load_full_state_dict(module, init[f"init.{role}"])
    out = {f"init.{role}": _whole(role, module) for role, module in held.items()}
    dp_rank, dp_size = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    out["metrics"] = phase.step(global_batch(cfg, micro, accumulation, dp_rank, dp_size))
    for opt_name, opt in phase.optimizers().items():
        out[f"grads.{opt_name}"] = whole_gradients(opt)
    for role, module in roles.named_roles().items():
        out[f"after.{role}"] = _whole(role, module)
    out["mismatches"] = replica_mismatches(phase.replicas())
    out["lr"] = {k: v.cfg.lr for k, v in phase.optimizers().items()}
    return out


def _whole(role: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    if role == "head":  # replicated, not a megatron model
        return {k: v.detach().clone() for k, v in module.state_dict().items()}
    return full_state_dict(module)
