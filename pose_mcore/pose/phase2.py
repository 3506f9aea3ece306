"""Phase II, unified adversarial equilibrium: the EMA generator as discriminator backbone (or the
frozen teacher, or a trained copy: the ablation modes), a trained head on its multi-layer features,
hinge (or non-saturating) losses, the spatio-temporal finite-difference R1 on real samples, and the
frame consistency loss for image-to-video."""

from __future__ import annotations

import torch
from pose_kernels import st_r1_perturb

from pose_mcore.config.base import VideoDiTConfig
from pose_mcore.config.train import Phase2Config
from pose_mcore.diffusion.flow import add_noise, x0_from_velocity
from pose_mcore.models.features import capture_features, default_layers
from pose_mcore.pose.conditioning import Conditioner, Conditions
from pose_mcore.pose.heads import ConvHead, SemanticHead
from pose_mcore.pose.losses import adversarial_d_loss, adversarial_g_loss, consistency_loss, st_r1_loss
from pose_mcore.pose.phase import Phase
from pose_mcore.pose.roles import Roles
from pose_mcore.training.optim import Optimizer


def build_head(cfg: Phase2Config, model_config: VideoDiTConfig, layers: list[int], text_dim: int,
               image_dim: int | None) -> torch.nn.Module:
    if cfg.head == "semantic":
        return SemanticHead(model_config.hidden_size, len(layers), text_dim, image_dim, cfg.head_dim,
                            cfg.head_queries, cfg.head_heads, model_config.sequence_parallel)
    if cfg.head == "conv":
        return ConvHead(model_config.hidden_size, len(layers), cfg.head_dim)
    raise ValueError(f"phase2.head={cfg.head!r} must be 'semantic' or 'conv'")


class Phase2(Phase):
    name = "phase2"

    def __init__(self, roles: Roles, conditioner: Conditioner, cfg: Phase2Config, seed: int, device: torch.device,
                 text_dim: int, image_dim: int | None) -> None:
        super().__init__(roles, conditioner, seed, device)
        self.cfg = cfg
        model_cfg = roles.generator.config
        self.layers = cfg.feature_layers or default_layers(roles.generator)
        head = build_head(cfg, model_cfg, self.layers, text_dim, image_dim).to(device)
        roles.attach_discriminator(head, cfg.backbone)
        self.i2v = model_cfg.in_channels > model_cfg.out_channels
        self.opt_g = Optimizer(list(roles.generator.parameters()), [roles.generator], cfg.optim_g)
        d_params = list(head.parameters())
        d_modules = [head]
        if cfg.backbone == "full":
            d_params += list(roles.disc_backbone.parameters())
            d_modules.append(roles.disc_backbone)
        self.opt_d = Optimizer(d_params, d_modules, cfg.optim_d)

    def optimizers(self) -> dict[str, Optimizer]:
        return {"generator": self.opt_g, "discriminator": self.opt_d}

    def discriminate(self, x_t: torch.Tensor, t: torch.Tensor, conds: Conditions) -> torch.Tensor:
        """``D(x_t, t, c)``: the head on the backbone's features of the noised input."""
        with self.roles.backbone() as backbone:
            x_in = conds.inputs(x_t)
            with capture_features(backbone, self.layers, x_in) as feats:
                self.velocity(backbone, x_t, t, conds, conds.cond)
        with self.amp():
            return self.roles.head(feats, t, conds.text, conds.image).float()

    def _t_adv(self, b: int) -> torch.Tensor:
        return self.times(b, self.cfg.t_adv_min, 1.0, 1.0)

    def discriminator_step(self, batch: dict[str, torch.Tensor], conds: Conditions) -> dict[str, float]:
        real = batch["latents"]
        with torch.no_grad():
            fake = self.generate(conds, self.noise(real))
        t = self._t_adv(real.shape[0])  # the same t for the real and the fake sample of a pair
        x_real = add_noise(real, self.noise(real), t)
        x_fake = add_noise(fake, self.noise(fake), t)
        d_real, d_fake = self.discriminate(x_real, t, conds), self.discriminate(x_fake, t, conds)
        loss = adversarial_d_loss(d_real, d_fake, self.cfg.adv_loss)
        r1 = torch.zeros(())
        if self.cfg.r1_weight > 0:
            seed = int(torch.randint(2**31 - 1, (1,), generator=self.rng))
            x_pert, eps_ms = st_r1_perturb(x_real, self.cfg.sigma_s, self.cfg.sigma_t, seed)
            r1 = st_r1_loss(self.discriminate(x_pert, t, conds), d_real, eps_ms)
            loss = loss + self.cfg.r1_weight * r1
        stepped, norm = self.opt_d.step(loss)
        return {"loss_d": loss.item(), "r1": r1.item(), "d_real": d_real.mean().item(),
                "d_fake": d_fake.mean().item(), "grad_norm_d": norm, "stepped_d": float(stepped)}

    def generator_step(self, batch: dict[str, torch.Tensor], conds: Conditions) -> dict[str, float]:
        x0 = self.generate(conds, self.noise(batch["latents"]))
        t = self._t_adv(x0.shape[0])
        loss = adversarial_g_loss(self.discriminate(add_noise(x0, self.noise(x0), t), t, conds), self.cfg.adv_loss)
        consist = torch.zeros(())
        if self.i2v and self.cfg.consistency_weight > 0:
            tc = self.times(x0.shape[0], self.cfg.t_min, self.cfg.t_max, self.cfg.shift)
            x_t = add_noise(x0.detach(), self.noise(x0), tc)
            with torch.no_grad(), self.roles.real() as teacher:
                x0_teacher = x0_from_velocity(x_t, tc, self.velocity(teacher, x_t, tc, conds, conds.cond))
            consist = consistency_loss(x0, x0_teacher)
            loss = loss + self.cfg.consistency_weight * consist
        stepped, norm = self.opt_g.step(loss)
        if stepped:
            self.roles.update_ema(self.cfg.ema_decay)
        return {"loss_g": loss.item(), "consistency": consist.item(), "grad_norm_g": norm,
                "stepped_g": float(stepped)}

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        conds = self.conditioner(batch)
        out = self.discriminator_step(batch, conds)
        out.update(self.generator_step(batch, conds))
        self.skipped += not (out["stepped_d"] and out["stepped_g"])
        out["stepped"] = float(out["stepped_d"] and out["stepped_g"])
        return out
