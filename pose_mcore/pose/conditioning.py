"""From a data batch to a DiT's inputs: the noisy latent (plus the I2V condition channels) and the
conditioning keyword arguments, conditional and unconditional (for classifier-free guidance).

Wan I2V (official layout): the DiT's input channels are ``[x_t | mask | condition latent]`` with the
clean first frame in the condition latent and the mask marking it, plus CLIP image tokens; here the
image tokens are a fixed random projection of the first frame's patches (no CLIP at toy scale).
HunyuanVideo: LLM tokens with a mask and a pooled vector (the mean text token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pose_mcore.config.base import VideoDiTConfig
from pose_mcore.config.hunyuan import HunyuanConfig
from pose_mcore.config.wan import WanConfig


@dataclass
class Conditions:
    """What a model needs beside ``x_t`` and the timestep, for one batch."""

    cond: dict[str, torch.Tensor]
    uncond: dict[str, torch.Tensor]
    channels: torch.Tensor | None
    """Extra input channels ``[b, c_extra, f, h, w]`` concatenated after ``x_t`` (I2V), or None."""
    text: torch.Tensor
    image: torch.Tensor | None
    first_frame: torch.Tensor | None = None
    """HunyuanVideo-I2V token replacement: the clean first latent frame that replaces ``x_t``'s."""

    def inputs(self, x_t: torch.Tensor) -> torch.Tensor:
        if self.first_frame is not None:
            x_t = torch.cat([self.first_frame.to(x_t), x_t[:, :, 1:]], dim=2)
        return x_t if self.channels is None else torch.cat([x_t, self.channels], dim=1)


class Conditioner:
    """Builds :class:`Conditions` for a model config from ``{"latents", "text", "first_frame"}`` batches."""

    def __init__(self, config: VideoDiTConfig, image_tokens_seed: int = 7) -> None:
        self.config = config
        self.extra_channels = config.in_channels - config.out_channels
        self._image_proj = None
        if isinstance(config, WanConfig) and config.image_dim is not None:
            ph, pw = config.patch_size[1:]
            gen = torch.Generator().manual_seed(image_tokens_seed)
            self._image_proj = torch.randn(config.out_channels * ph * pw, config.image_dim, generator=gen)

    def __call__(self, batch: dict[str, torch.Tensor]) -> Conditions:
        cfg = self.config
        text = batch["text"]
        latents = batch["latents"]
        channels = image = first_frame = None
        if self.extra_channels:
            first = torch.zeros_like(latents)
            first[:, :, :1] = batch["first_frame"]
            n_mask = self.extra_channels - cfg.out_channels
            if n_mask < 0:
                raise ValueError(f"in_channels={cfg.in_channels} cannot hold the noisy latent and the condition "
                                 f"latent ({cfg.out_channels} channels each)")
            mask = torch.zeros(latents.shape[0], n_mask, *latents.shape[2:], dtype=latents.dtype,
                               device=latents.device)
            mask[:, :, :1] = 1
            channels = torch.cat([mask, first], dim=1) if n_mask else first
        if isinstance(cfg, WanConfig):
            cond = {"encoder_hidden_states": text}
            uncond = {"encoder_hidden_states": torch.zeros_like(text)}
            if self._image_proj is not None:
                ph, pw = cfg.patch_size[1:]
                patches = batch["first_frame"][:, :, 0].unfold(2, ph, ph).unfold(3, pw, pw)  # b c h w ph pw
                patches = patches.permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)
                image = patches @ self._image_proj.to(patches)
                cond["encoder_hidden_states_image"] = uncond["encoder_hidden_states_image"] = image
        elif isinstance(cfg, HunyuanConfig):
            mask = torch.ones(text.shape[:2], dtype=torch.long, device=text.device)
            pooled = torch.zeros(text.shape[0], cfg.pooled_dim, dtype=text.dtype, device=text.device)
            pooled[:, : min(cfg.pooled_dim, text.shape[-1])] = text.mean(1)[:, : cfg.pooled_dim]
            cond = {"encoder_hidden_states": text, "encoder_attention_mask": mask, "pooled_projections": pooled}
            uncond = {"encoder_hidden_states": torch.zeros_like(text), "encoder_attention_mask": mask,
                      "pooled_projections": torch.zeros_like(pooled)}
            if cfg.guidance_embeds:
                cond["guidance"] = uncond["guidance"] = torch.full((text.shape[0],), 1000.0, device=text.device)
            if cfg.image_condition_type == "token_replace":
                first_frame = batch["first_frame"]
        else:
            raise TypeError(f"no conditioning for {type(cfg).__name__}")
        return Conditions(cond, uncond, channels, text, image, first_frame)
