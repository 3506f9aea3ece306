"""Small phase set-ups shared by the phase tests and the TP=2 training-step script."""

from __future__ import annotations

import torch
from devices import to_device
from torch.utils.data import default_collate

from pose_mcore.config.train import OptimConfig, Phase1Config, Phase2Config
from pose_mcore.config.wan import wan_config
from pose_mcore.data.procedural import ProceduralConfig, ProceduralVideos
from pose_mcore.models.wan import WanModel
from pose_mcore.parallel.state import run_device
from pose_mcore.pose.conditioning import Conditioner
from pose_mcore.pose.phase1 import Phase1
from pose_mcore.pose.phase2 import Phase2
from pose_mcore.pose.roles import Roles

PHASE1 = Phase1Config(fake_updates=2, optim_g=OptimConfig(lr=1e-3), optim_fake=OptimConfig(lr=1e-2), real_guidance=2.0)
PHASE2 = Phase2Config(head_dim=16, head_queries=4, head_heads=2, optim_g=OptimConfig(lr=1e-3, betas=(0.5, 0.999)),
                      optim_d=OptimConfig(lr=1e-3, betas=(0.5, 0.999)), ema_decay=0.9, r1_weight=0.5)


def batch_for(cfg, size: int = 2, frames: int = 3, height: int = 4, width: int = 6) -> dict[str, torch.Tensor]:
    """A procedural batch on this process's device."""
    data = ProceduralVideos(ProceduralConfig(channels=cfg.out_channels, text_dim=cfg.text_dim, frames=frames,
                                             height=height, width=width, size=2), 16, seed=5)
    return to_device(default_collate([data[i] for i in range(size)]))


def phase1_setup(preset: str = "tiny-t2v", teacher_state=None, **overrides):
    cfg = wan_config(preset, **overrides)
    torch.manual_seed(0)
    teacher = WanModel(cfg).to(run_device())
    if teacher_state is not None:
        from pose_mcore.parallel.sharding import load_full_state_dict

        load_full_state_dict(teacher, teacher_state)
    roles = Roles(teacher, lora_rank=4, lora_alpha=4)
    return roles, Phase1(roles, Conditioner(cfg), PHASE1, seed=3, device=run_device()), cfg


def phase2_setup(roles, cfg, backbone: str = "ema", head: str = "semantic", **overrides):
    pcfg = Phase2Config(**{**PHASE2.__dict__, "backbone": backbone, "head": head, **overrides})
    torch.manual_seed(1)
    return Phase2(roles, Conditioner(cfg), pcfg, seed=4, device=run_device(), text_dim=cfg.text_dim,
                  image_dim=cfg.image_dim)
