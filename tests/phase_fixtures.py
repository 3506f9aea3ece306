"""Small phase set-ups shared by the phase tests and the TP=2 training-step script."""

from __future__ import annotations

import contextlib
import dataclasses

import torch
from devices import to_device
from megatron.core import parallel_state
from torch.utils.data import default_collate

from pose_mcore.config.train import OptimConfig, Phase1Config, Phase2Config
from pose_mcore.data.procedural import ProceduralConfig, ProceduralVideos
from pose_mcore.data.sampler import BatchStream
from pose_mcore.models.registry import family_of_preset
from pose_mcore.parallel.sharding import full_state_dict, load_full_state_dict
from pose_mcore.parallel.state import run_device
from pose_mcore.pose.conditioning import Conditioner
from pose_mcore.pose.phase1 import Phase1
from pose_mcore.pose.phase2 import Phase2
from pose_mcore.pose.roles import Roles

PHASE1 = Phase1Config(fake_updates=2, optim_g=OptimConfig(lr=1e-3), optim_fake=OptimConfig(lr=1e-2), real_guidance=2.0)
PHASE2 = Phase2Config(head_dim=16, head_queries=4, head_heads=2, optim_g=OptimConfig(lr=1e-3, betas=(0.5, 0.999)),
                      optim_d=OptimConfig(lr=1e-3, betas=(0.5, 0.999)), ema_decay=0.9, r1_weight=0.5)


def batch_for(cfg, size: int = 2, frames: int = 3, height: int = 4, width: int = 6) -> dict[str, torch.Tensor]:
    """A procedural batch on this process's device (samples 0.. of a global batch)."""
    data = ProceduralVideos(ProceduralConfig(channels=cfg.out_channels, text_dim=cfg.text_dim, frames=frames,
                                             height=height, width=width, size=2), 16, seed=5)
    batch = default_collate([data[i] for i in range(size)])
    batch["sample_index"] = torch.arange(size)
    return to_device(batch)


def phase1_setup(preset: str = "tiny-t2v", teacher_state=None, engine=None, dtype=torch.float32, **overrides):
    family = family_of_preset(preset)
    cfg = family.make_config(preset, **overrides)
    torch.manual_seed(0)
    teacher = family.model_class(cfg).to(run_device())
    if teacher_state is not None:
        load_full_state_dict(teacher, teacher_state)
    roles = Roles(teacher, lora_rank=4, lora_alpha=4, dtype=dtype)
    return roles, Phase1(roles, Conditioner(cfg, stand_ins=True), PHASE1, seed=3, device=run_device(), engine=engine), cfg


def phase2_setup(roles, cfg, backbone: str = "ema", head: str = "semantic", engine=None, **overrides):
    pcfg = Phase2Config(**{**PHASE2.__dict__, "backbone": backbone, "head": head, **overrides})
    torch.manual_seed(1)
    return Phase2(roles, Conditioner(cfg, stand_ins=True), pcfg, seed=4, device=run_device(), text_dim=cfg.text_dim,
                  image_dim=getattr(cfg, "image_dim", None), engine=engine)


def global_batch(cfg, micro: int, accumulation: int, dp_rank: int = 0, dp_size: int = 1):
    """This rank's micro-batches of the first global batch of 4 procedural videos of 27 tokens (odd: padded
    under sequence parallelism), as the trainer's batch stream cuts it for the layout."""
    data = ProceduralVideos(ProceduralConfig(channels=cfg.out_channels, text_dim=cfg.text_dim, frames=3, height=6,
                                             width=6, size=2), 4, seed=5)
    return [to_device(b) for b in BatchStream(data, micro, accumulation, 11, dp_rank, dp_size).next()]


TWO_PHASE_CASES = {"tiny-t2v": ("tiny-t2v", {}), "tiny-i2v": ("tiny-i2v", {}),
                   "tiny-hunyuan-t2v": ("tiny-hunyuan-t2v", {}),
                   "tiny-t2v-feature-r1": ("tiny-t2v", {"backbone": "full", "r1_on": "features"})}
"""name -> (preset, Phase II settings) of the runs :func:`two_phase_steps` makes in the layout tests."""


def two_phase_steps(case: str, micro: int, accumulation: int, init: dict | None = None, engine=None,
                    **model_overrides) -> dict:
    """One Phase I and one Phase II step of ``case`` (:data:`TWO_PHASE_CASES`) on the first global batch, from
    ``init``'s weights when given (whole tensors); returns the metrics and the roles' whole weights before and
    after."""
    preset, phase2_settings = TWO_PHASE_CASES[case]
    roles, phase1, cfg = phase1_setup(preset, engine=engine, **model_overrides)
    if init is not None:
        load_full_state_dict(roles.generator, init["init.generator"])
        load_full_state_dict(roles.base, init["init.base"])
    out = {"init.generator": full_state_dict(roles.generator), "init.base": full_state_dict(roles.base)}
    dp_rank, dp_size = parallel_state.get_data_parallel_rank(), parallel_state.get_data_parallel_world_size()
    batches = global_batch(cfg, micro, accumulation, dp_rank, dp_size)
    out["phase1"] = phase1.step(batches)
    phase2 = phase2_setup(roles, cfg, engine=engine, **phase2_settings)
    if init is not None:
        roles.head.load_state_dict(init["init.head"])
    out["init.head"] = {k: v.clone() for k, v in roles.head.state_dict().items()}
    out["phase2"] = phase2.step(batches)
    for name in ("generator", "base", "ema", "disc_backbone"):
        if getattr(roles, name) is not None:
            out[f"after.{name}"] = full_state_dict(getattr(roles, name))
    out["after.head"] = {k: v.clone() for k, v in roles.head.state_dict().items()}
    return out


@contextlib.contextmanager
def robust_optimisers():
    """Adam with eps = 1e-3 inside: gradients that are zero up to rounding (a key bias, which softmax ignores)
    then move weights by ~lr * 1e-9 instead of a full lr-sized step in a rounding-dependent direction,
    so weights after one step can be compared between layouts."""
    global PHASE1, PHASE2
    saved = PHASE1, PHASE2
    PHASE1 = dataclasses.replace(PHASE1, **{k: dataclasses.replace(getattr(PHASE1, k), eps=1e-3)
                                            for k in ("optim_g", "optim_fake")})
    PHASE2 = dataclasses.replace(PHASE2, **{k: dataclasses.replace(getattr(PHASE2, k), eps=1e-3)
                                            for k in ("optim_g", "optim_d")})
    try:
        yield
    finally:
        PHASE1, PHASE2 = saved
