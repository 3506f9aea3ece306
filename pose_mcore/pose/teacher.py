"""Teacher pre-training: plain flow matching, with the text dropped for a fraction of the samples so
the teacher also learns the unconditional velocity that classifier-free guidance needs."""

from __future__ import annotations

import torch

from pose_mcore.config.train import TeacherConfig
from pose_mcore.diffusion.flow import add_noise
from pose_mcore.pose.conditioning import Conditioner
from pose_mcore.pose.losses import flow_matching_loss
from pose_mcore.pose.phase import Phase
from pose_mcore.pose.roles import Roles
from pose_mcore.training.optim import Optimizer


class TeacherPhase(Phase):
    name = "teacher"

    def __init__(self, roles: Roles, conditioner: Conditioner, cfg: TeacherConfig, seed: int,
                 device: torch.device) -> None:
        super().__init__(roles, conditioner, seed, device)
        self.cfg = cfg
        model = roles.generator
        self.opt = Optimizer(list(model.parameters()), [model], cfg.optim)

    def optimizers(self) -> dict[str, Optimizer]:
        return {"teacher": self.opt}

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        conds = self.conditioner(batch)
        x0 = batch["latents"]
        b = x0.shape[0]
        drop = (torch.rand(b, generator=self.rng) < self.cfg.uncond_prob).to(self.device)
        kwargs = {k: torch.where(drop.view(-1, *[1] * (v.dim() - 1)), conds.uncond[k], v) if v.is_floating_point()
                  else v for k, v in conds.cond.items()}
        t = self.times(b, 0.0, 1.0, self.cfg.shift)
        eps = self.noise(x0)
        v = self.velocity(self.roles.generator, add_noise(x0, eps, t), t, conds, kwargs)
        loss = flow_matching_loss(v, x0, eps)
        stepped, norm = self.opt.step(loss)
        self.skipped += not stepped
        return {"loss": loss.item(), "grad_norm": norm, "stepped": float(stepped)}
