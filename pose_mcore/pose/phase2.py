"""Phase II, unified adversarial equilibrium: the EMA generator as discriminator backbone (or the
frozen teacher, or a trained copy: the ablation modes), a trained head on its multi-layer features,
hinge (or non-saturating) losses, the spatio-temporal finite-difference R1 on real samples (on the
logit, or on the backbone's features), and the frame consistency loss for image-to-video."""

from __future__ import annotations

import torch
from pose_kernels import st_r1_perturb

from pose_mcore.config.base import VideoDiTConfig
from pose_mcore.config.train import Phase2Config
from pose_mcore.diffusion.flow import add_noise, x0_from_velocity
from pose_mcore.engine.optimizer import Engine, Optimizer
from pose_mcore.models.features import Features, capture_features, default_layers, unused_by_features
from pose_mcore.pose.conditioning import Conditioner, Conditions
from pose_mcore.pose.heads import ConvHead, SemanticHead
from pose_mcore.pose.losses import (
    adversarial_d_loss,
    adversarial_g_loss,
    consistency_loss,
    feature_st_r1_loss,
    st_r1_loss,
)
from pose_mcore.pose.phase import MicroBatches, Phase
from pose_mcore.pose.roles import Roles


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
                 text_dim: int, image_dim: int | None, engine: Engine | None = None) -> None:
        super().__init__(roles, conditioner, seed, device, engine)
        self.cfg = cfg
        model_cfg = roles.generator.config
        self.layers = cfg.feature_layers or default_layers(roles.generator)
        head = build_head(cfg, model_cfg, self.layers, text_dim, image_dim).to(device)
        roles.attach_discriminator(head, cfg.backbone)
        self.i2v = model_cfg.in_channels > model_cfg.out_channels
        self.opt_g = self.generator_optimizer(cfg.generator_params, cfg.optim_g)
        self.d_modules = [head] + ([roles.disc_backbone] if cfg.backbone == "full" else [])
        if cfg.backbone == "full":
            # What the head cannot see is not trained (and not in DDP's buckets, whose overlapped reduction
            # starts a bucket only once every parameter in it has a gradient).
            for p in unused_by_features(roles.disc_backbone, self.layers):
                p.requires_grad_(False)
        self.opt_d = self.optimizer(self.d_modules, cfg.optim_d)

    def optimizers(self) -> dict[str, Optimizer]:
        return {"generator": self.opt_g, "discriminator": self.opt_d}

    def features(self, x_t: torch.Tensor, t: torch.Tensor, conds: Conditions) -> Features:
        """The backbone's outputs at the feature layers for the noised input ``x_t``."""
        with self.roles.backbone() as backbone:
            with capture_features(backbone, self.layers, conds.inputs(x_t)) as feats:
                self.velocity(backbone, x_t, t, conds, conds.cond)
        return feats

    def logit(self, feats: Features, t: torch.Tensor, conds: Conditions) -> torch.Tensor:
        """The head's logit on backbone features."""
        with self.amp():
            return self.roles.head(feats, t, conds.text, conds.image, conds.text_mask).float()

    def discriminate(self, x_t: torch.Tensor, t: torch.Tensor, conds: Conditions) -> torch.Tensor:
        """``D(x_t, t, c)``: the head on the backbone's features of the noised input."""
        return self.logit(self.features(x_t, t, conds), t, conds)

    def discriminator_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Hinge (or non-saturating) loss on a real and a generated sample at the same noise level, plus the
        spatio-temporal R1 on the real one (on the logit, or on the backbone's features)."""
        conds, draws = self.conditioner(batch), self.draws(batch, "discriminator")
        real = batch["latents"]
        with torch.no_grad():
            fake = self.generate(conds, draws.noise(real))
        t = draws.times(self.cfg.t_adv_min, 1.0, 1.0)  # the same t for the real and the fake sample of a pair
        x_real = add_noise(real, draws.noise(real), t)
        x_fake = add_noise(fake, draws.noise(fake), t)
        feats_real = self.features(x_real, t, conds)
        d_real, d_fake = self.logit(feats_real, t, conds), self.discriminate(x_fake, t, conds)
        loss = adversarial_d_loss(d_real, d_fake, self.cfg.adv_loss)
        r1 = torch.zeros((), device=loss.device)
        if self.cfg.r1_weight > 0:  # each sample perturbed from its own seed: the same on any rank
            pert = [st_r1_perturb(x_real[i:i + 1], self.cfg.sigma_s, self.cfg.sigma_t, seed)
                    for i, seed in enumerate(draws.seeds())]
            x_pert, eps_ms = torch.cat([x for x, _ in pert]), torch.cat([e for _, e in pert])
            if self.cfg.r1_on == "features":
                r1 = feature_st_r1_loss(self.features(x_pert, t, conds), feats_real, eps_ms)
            else:
                r1 = st_r1_loss(self.discriminate(x_pert, t, conds), d_real, eps_ms)
            loss = loss + self.cfg.r1_weight * r1
        return loss, {"r1": r1, "d_real": d_real.mean(), "d_fake": d_fake.mean()}

    def generator_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The adversarial loss through the (not updated) discriminator, plus the frame consistency loss (I2V)."""
        conds, draws = self.conditioner(batch), self.draws(batch, "generator")
        x0 = self.generate(conds, draws.noise(batch["latents"]))
        t = draws.times(self.cfg.t_adv_min, 1.0, 1.0)
        loss = adversarial_g_loss(self.discriminate(add_noise(x0, draws.noise(x0), t), t, conds), self.cfg.adv_loss)
        consist = torch.zeros((), device=loss.device)
        if self.i2v and self.cfg.consistency_weight > 0:
            tc = draws.times(self.cfg.t_min, self.cfg.t_max, self.cfg.shift)
            x_t = add_noise(x0.detach(), draws.noise(x0), tc)
            with torch.no_grad(), self.roles.real() as teacher:
                x0_teacher = x0_from_velocity(x_t, tc, self.velocity(teacher, x_t, tc, conds, conds.cond))
            consist = consistency_loss(x0, x0_teacher)
            loss = loss + self.cfg.consistency_weight * consist
        return loss, {"consistency": consist}

    def update(self, micro_batches: MicroBatches) -> dict[str, float]:
        d = self.opt_d.step(self.discriminator_loss, micro_batches)
        g = self.opt_g.step(self.generator_loss, micro_batches, frozen=self.d_modules)  # no discriminator grads
        if g.stepped:
            self.roles.update_ema(self.cfg.ema_decay)
        return {"loss_d": d.metrics["loss"], "r1": d.metrics["r1"], "d_real": d.metrics["d_real"],
                "d_fake": d.metrics["d_fake"], "grad_norm_d": d.grad_norm, "stepped_d": float(d.stepped),
                "loss_g": g.metrics["loss"], "consistency": g.metrics["consistency"], "grad_norm_g": g.grad_norm,
                "stepped_g": float(g.stepped), "stepped": float(d.stepped and g.stepped)}
