"""Phase I, stability priming: distribution matching with the frozen teacher (real score) and the
zero-initialised LoRA on the same base (fake score); ``fake_updates`` fake-score updates per
generator update."""

from __future__ import annotations

import torch

from pose_mcore.config.train import Phase1Config
from pose_mcore.diffusion.flow import add_noise, x0_from_velocity
from pose_mcore.diffusion.samplers import cfg_velocity
from pose_mcore.pose.conditioning import Conditioner, Conditions
from pose_mcore.pose.losses import distribution_matching_loss, flow_matching_loss
from pose_mcore.pose.phase import Phase
from pose_mcore.pose.roles import Roles
from pose_mcore.training.optim import Optimizer


class Phase1(Phase):
    name = "phase1"

    def __init__(self, roles: Roles, conditioner: Conditioner, cfg: Phase1Config, seed: int,
                 device: torch.device) -> None:
        super().__init__(roles, conditioner, seed, device)
        self.cfg = cfg
        self.opt_g = Optimizer(list(roles.generator.parameters()), [roles.generator], cfg.optim_g)
        self.opt_fake = Optimizer(roles.fake_params, [roles.base], cfg.optim_fake)

    def optimizers(self) -> dict[str, Optimizer]:
        return {"generator": self.opt_g, "fake": self.opt_fake}

    def _t(self, b: int) -> torch.Tensor:
        return self.times(b, self.cfg.t_min, self.cfg.t_max, self.cfg.shift)

    def fake_step(self, conds: Conditions, x_T: torch.Tensor) -> tuple[float, bool]:
        with torch.no_grad():
            x0 = self.generate(conds, x_T)
        t, eps = self._t(x0.shape[0]), self.noise(x0)
        with self.roles.fake() as fake:
            v = self.velocity(fake, add_noise(x0, eps, t), t, conds, conds.cond)
        loss = flow_matching_loss(v, x0, eps)
        stepped, _ = self.opt_fake.step(loss)
        return loss.item(), stepped

    def generator_step(self, conds: Conditions, x_T: torch.Tensor) -> tuple[float, float, bool]:
        x0 = self.generate(conds, x_T)
        t, eps = self._t(x0.shape[0]), self.noise(x0)
        x_t = add_noise(x0.detach(), eps, t)
        with torch.no_grad():
            with self.roles.real() as real:
                v_real = self.velocity(real, x_t, t, conds, conds.cond)
                if self.cfg.real_guidance != 1.0:
                    v_real = cfg_velocity(v_real, self.velocity(real, x_t, t, conds, conds.uncond),
                                          self.cfg.real_guidance)
            with self.roles.fake() as fake:
                v_fake = self.velocity(fake, x_t, t, conds, conds.cond)
        loss = distribution_matching_loss(x0, x0_from_velocity(x_t, t, v_real), x0_from_velocity(x_t, t, v_fake))
        stepped, norm = self.opt_g.step(loss)
        return loss.item(), norm, stepped

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        conds = self.conditioner(batch)
        x_T_shape = batch["latents"]
        fake_losses, ok = [], True
        for _ in range(self.cfg.fake_updates):
            loss, stepped = self.fake_step(conds, self.noise(x_T_shape))
            fake_losses.append(loss)
            ok &= stepped
        dm, norm, stepped = self.generator_step(conds, self.noise(x_T_shape))
        ok &= stepped
        self.skipped += not ok
        return {"loss_dm": dm, "loss_fake": sum(fake_losses) / max(len(fake_losses), 1), "grad_norm": norm,
                "stepped": float(ok)}
