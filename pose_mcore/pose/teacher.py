"""Teacher pre-training: plain flow matching, with the text dropped for a fraction of the samples so
the teacher also learns the unconditional velocity that classifier-free guidance needs."""

from __future__ import annotations

import torch

from pose_mcore.config.train import TeacherConfig
from pose_mcore.diffusion.flow import add_noise
from pose_mcore.engine.optimizer import Engine, Optimizer
from pose_mcore.pose.conditioning import Conditioner
from pose_mcore.pose.losses import flow_matching_loss
from pose_mcore.pose.phase import MicroBatches, Phase
from pose_mcore.pose.roles import Roles


class TeacherPhase(Phase):
    name = "teacher"

    def __init__(self, roles: Roles, conditioner: Conditioner, cfg: TeacherConfig, seed: int,
                 device: torch.device, engine: Engine | None = None) -> None:
        super().__init__(roles, conditioner, seed, device, engine)
        self.cfg = cfg
        self.opt = self.optimizer([roles.generator], cfg.optim)

    def optimizers(self) -> dict[str, Optimizer]:
        return {"teacher": self.opt}

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        conds = self.conditioner(batch)
        x0 = batch["latents"]
        draws = self.draws(batch, "teacher")
        drop = (draws.uniform() < self.cfg.uncond_prob).to(self.device)
        kwargs = conds.dropped(drop)
        t = draws.times(0.0, 1.0, self.cfg.shift)
        eps = draws.noise(x0)
        v = self.velocity(self.roles.generator, add_noise(x0, eps, t), t, conds, kwargs)
        return flow_matching_loss(v, x0, eps), {}

    def update(self, micro_batches: MicroBatches) -> dict[str, float]:
        out = self.opt.step(self.loss, micro_batches)
        return {"loss": out.metrics["loss"], "grad_norm": out.grad_norm, "stepped": float(out.stepped)}
