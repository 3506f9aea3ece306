"""Phase I, stability priming: distribution matching with the frozen teacher (real score) and the
zero-initialised LoRA on the same base (fake score); ``fake_updates`` fake-score updates per
generator update. With a two-expert teacher both scores of a sample are its time's expert (the base routes
each sample), the real one guided with that expert's scale."""

from __future__ import annotations

import torch

from pose_mcore.config.train import Phase1Config
from pose_mcore.diffusion.flow import add_noise, x0_from_velocity
from pose_mcore.diffusion.samplers import VelocityFn, guided
from pose_mcore.engine.optimizer import Engine, Optimizer
from pose_mcore.models.experts import guidance_of
from pose_mcore.pose.conditioning import Conditioner
from pose_mcore.pose.losses import distribution_matching_loss, flow_matching_loss
from pose_mcore.pose.phase import MicroBatches, Phase
from pose_mcore.pose.roles import Roles


class Phase1(Phase):
    name = "phase1"

    def __init__(self, roles: Roles, conditioner: Conditioner, cfg: Phase1Config, seed: int,
                 device: torch.device, engine: Engine | None = None) -> None:
        super().__init__(roles, conditioner, seed, device, engine)
        self.cfg = cfg
        self.opt_g = self.generator_optimizer(cfg.generator_params, cfg.optim_g)
        self.opt_fake = self.optimizer([roles.base], cfg.optim_fake)

    def optimizers(self) -> dict[str, Optimizer]:
        return {"generator": self.opt_g, "fake": self.opt_fake}

    def fake_loss(self, batch: dict[str, torch.Tensor], update: int) -> tuple[torch.Tensor, dict]:
        """Flow matching of the fake score on the generator's current samples."""
        conds, draws = self.conditioner(batch), self.draws(batch, f"fake{update}")
        with torch.no_grad():
            x0 = self.generate(conds, draws.noise(batch["latents"]))
        t, eps = draws.times(self.cfg.t_min, self.cfg.t_max, self.cfg.shift), draws.noise(x0)
        with self.roles.fake() as fake:
            v = self.velocity(fake, add_noise(x0, eps, t), t, conds, conds.cond)
        return flow_matching_loss(v, x0, eps), {}

    def generator_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        """Distribution matching: the real (guided) and the fake score's x0 estimates on the noised sample."""
        conds, draws = self.conditioner(batch), self.draws(batch, "generator")
        x0 = self.generate(conds, draws.noise(batch["latents"]))
        t, eps = draws.times(self.cfg.t_min, self.cfg.t_max, self.cfg.shift), draws.noise(x0)
        x_t = add_noise(x0.detach(), eps, t)
        with torch.no_grad():
            with self.roles.real() as real:
                def score(fields: dict[str, torch.Tensor]) -> VelocityFn:
                    return lambda x, tt: self.velocity(real, x, tt, conds, fields)

                guidance = guidance_of(real, self.cfg.real_guidance, self.cfg.real_guidance_low)
                v_real = guided(score(conds.cond), score(conds.uncond), guidance)(x_t, t)
            with self.roles.fake() as fake:
                v_fake = self.velocity(fake, x_t, t, conds, conds.cond)
        return distribution_matching_loss(x0, x0_from_velocity(x_t, t, v_real), x0_from_velocity(x_t, t, v_fake)), {}

    def update(self, micro_batches: MicroBatches) -> dict[str, float]:
        fake_losses, ok = [], True
        for k in range(self.cfg.fake_updates):
            out = self.opt_fake.step(lambda batch, k=k: self.fake_loss(batch, k), micro_batches)
            fake_losses.append(out.metrics["loss"])
            ok &= out.stepped
        out = self.opt_g.step(self.generator_loss, micro_batches)
        ok &= out.stepped
        return {"loss_dm": out.metrics["loss"], "loss_fake": sum(fake_losses) / max(len(fake_losses), 1),
                "grad_norm": out.grad_norm, "stepped": float(ok)}
