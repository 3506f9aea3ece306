"""From a data batch to a DiT's inputs: the noisy latent (plus the I2V condition channels) and the
conditioning keyword arguments, conditional and unconditional (for classifier-free guidance).

A prepared dataset (``pose-prepare``) holds every field the model was trained on, computed by the model
folder's own encoders (:mod:`pose_mcore.encoders`): ``text`` (and HunyuanVideo's ``text_mask``,
``pooled``; HunyuanVideo-1.5's ``text_mask``, ``glyph``, ``glyph_mask``), the I2V image tokens ``image_states``
(Wan2.1's CLIP, HunyuanVideo-1.5's SigLIP), the I2V ``condition`` channels (Wan ``[mask | condition latent]``,
HunyuanVideo ``[condition latent | mask]``; HunyuanVideo-1.5 T2V feeds them as zeros, as its pipeline does); the
unconditional input is the dataset's encoded negative prompt. Only the procedural toy dataset, which has no
encoders, gets stand-ins (``stand_ins=True``): image tokens from a fixed random projection of the first frame's
patches, a condition latent of the first frame followed by zeros, an all-ones text mask, the mean text token as
pooled vector, no glyph text and zeros as the negative prompt.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pose_mcore.config.base import VideoDiTConfig
from pose_mcore.config.hunyuan import HunyuanConfig
from pose_mcore.config.hunyuan15 import HunyuanVideo15Config
from pose_mcore.config.wan import WanConfig
from pose_mcore.diffusion.flow import model_timestep


def required_fields(config: VideoDiTConfig) -> tuple[str, ...]:
    """The per-sample fields a model of ``config`` is conditioned on."""
    fields = ["latents", "text"]
    if isinstance(config, HunyuanConfig):
        fields += ["text_mask", "pooled"]
    if isinstance(config, HunyuanVideo15Config):
        fields += ["text_mask", "glyph", "glyph_mask"]
    if (isinstance(config, WanConfig) and config.image_dim is not None) or _hunyuan15_i2v(config):
        fields.append("image_states")
    if config.in_channels > config.out_channels and (_hunyuan15_i2v(config) or
                                                     not isinstance(config, HunyuanVideo15Config)):
        fields.append("condition")
    if getattr(config, "image_condition_type", None) == "token_replace":
        fields.append("first_frame")
    return tuple(fields)


def _hunyuan15_i2v(config: VideoDiTConfig) -> bool:
    return isinstance(config, HunyuanVideo15Config) and config.task_type == "i2v"


def image_token_dim(config: VideoDiTConfig) -> int | None:
    """The width of the image tokens a model of ``config`` reads (Wan2.1 I2V's CLIP, HunyuanVideo-1.5 I2V's
    SigLIP), or None."""
    return config.image_dim if "image_states" in required_fields(config) else None


def needs_image(config: VideoDiTConfig) -> bool:
    """Whether a model of ``config`` is conditioned on a first frame (image-to-video)."""
    return bool({"image_states", "condition", "first_frame"} & set(required_fields(config)))


def negative_fields(config: VideoDiTConfig) -> tuple[str, ...]:
    """The fields of the encoded negative prompt a model of ``config`` needs."""
    if isinstance(config, HunyuanVideo15Config):
        return "text", "text_mask", "glyph", "glyph_mask"
    return ("text", "text_mask", "pooled") if isinstance(config, HunyuanConfig) else ("text",)


def missing_fields(config: VideoDiTConfig, fields: Collection[str], negative: Collection[str] | None) -> list[str]:
    """What a dataset holding ``fields`` (and a negative prompt with ``negative`` fields, or None) lacks for
    ``config``, one line each."""
    return [f"field {f!r} is missing (the model is conditioned on {', '.join(required_fields(config))})"
            for f in required_fields(config) if f not in fields] + missing_negative(config, negative)


def missing_negative(config: VideoDiTConfig, negative: Collection[str] | None) -> list[str]:
    """What an encoded negative prompt with ``negative`` fields (None: no negative prompt) lacks for ``config``."""
    if negative is None:
        return ["the encoded negative prompt (negative.safetensors) is missing"]
    return [f"negative prompt field {f!r} is missing" for f in negative_fields(config) if f not in negative]


MASKED_TEXT = ("text", "text_mask", "glyph", "glyph_mask")
"""The per-token fields of masked text, whose length may differ between the prompt and the negative."""
_MASKED_KWARGS = (("encoder_hidden_states", "encoder_attention_mask"),
                  ("encoder_hidden_states_2", "encoder_attention_mask_2"))
"""The model's masked text inputs: (tokens, mask)."""

HUNYUAN_I2V_START_NOISE = 0.999
"""The noise share of HunyuanVideo-I2V's starting latent (the rest is the first frame's latent)."""


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
    """Token replacement (HunyuanVideo-I2V, Wan2.2 TI2V): the clean first latent frame that replaces ``x_t``'s
    and the sample's."""
    frame_tokens: int | None = None
    """Wan2.2 TI2V: the tokens of one latent frame; the first frame's tokens get timestep 0 (diffusers'
    ``expand_timesteps``). None: one timestep per sample."""
    start_image: torch.Tensor | None = None
    """HunyuanVideo-I2V: the clean first-frame latent ``[b, c, 1, h, w]`` that the pipelines mix into the
    starting noise (:meth:`start`); None for the other models."""
    text_mask: torch.Tensor | None = None
    """The mask ``[b, l]`` of a masked ``text`` (HunyuanVideo, -1.5), for the discriminator head; None for Wan,
    whose zero-padded text the DiT attends whole."""

    def start(self, noise: torch.Tensor) -> torch.Tensor:
        """The generator's input at ``t = 1``: ``noise``, or for HunyuanVideo-I2V ``0.999 * noise + 0.001 *
        image latent`` on every frame, as diffusers' ``HunyuanVideoImageToVideoPipeline`` (and the official
        sampler's ``i2v_stability``) start; training starts the same way, so the exported generator sees in
        diffusers what it was trained on."""
        if self.start_image is None:
            return noise
        share = torch.tensor(HUNYUAN_I2V_START_NOISE, device=noise.device)  # fp32 arithmetic, as the pipeline's
        return noise * share + self.start_image.to(noise) * (1 - share)

    def dropped(self, drop: torch.Tensor) -> dict[str, torch.Tensor]:
        """The conditional kwargs with the samples where ``drop [b]`` is true made unconditional (text
        dropout). Masked text of different lengths is first padded to the longer with masked zeros, which
        changes nothing: a masked token is seen by no other."""
        cond, uncond = dict(self.cond), dict(self.uncond)
        for text, mask in _MASKED_KWARGS:
            if mask in cond and cond[text].shape[1] != uncond[text].shape[1]:
                length = max(cond[text].shape[1], uncond[text].shape[1])
                for kwargs in (cond, uncond):
                    for name in (text, mask):
                        v = kwargs[name]
                        kwargs[name] = F.pad(v, (0, 0) * (v.dim() - 2) + (0, length - v.shape[1]))
        return {k: torch.where(drop.view(-1, *[1] * (v.dim() - 1)), uncond[k], v) for k, v in cond.items()}

    def inputs(self, x_t: torch.Tensor) -> torch.Tensor:
        """The DiT's input for ``x_t``: its first frame replaced, the condition channels appended."""
        x_t = self.output(x_t)
        return x_t if self.channels is None else torch.cat([x_t, self.channels], dim=1)

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` with its first frame replaced by the clean one (token replacement), else ``x``."""
        if self.first_frame is None:
            return x
        return torch.cat([self.first_frame.to(x), x[:, :, 1:]], dim=2)

    def timestep(self, t: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """The DiT's time input at ``t [b]``: ``[b]``, or ``[b, tokens]`` with the first frame's tokens at 0."""
        ts = model_timestep(t)
        if self.frame_tokens is None:
            return ts
        ts = ts[:, None].expand(-1, x_t.shape[2] * self.frame_tokens).clone()
        ts[:, : self.frame_tokens] = 0
        return ts


class Conditioner:
    """Builds :class:`Conditions` for a model config from batches of the dataset's fields.

    ``negative``: the encoded negative prompt (unbatched fields), the unconditional input. ``stand_ins``:
    derive missing fields with toy formulas (the procedural dataset only); otherwise a missing field is
    an error naming it.
    """

    def __init__(self, config: VideoDiTConfig, negative: dict[str, torch.Tensor] | None = None,
                 stand_ins: bool = False, image_tokens_seed: int = 7) -> None:
        self.config, self.negative, self.stand_ins = config, negative, stand_ins
        self.fields = required_fields(config)
        if getattr(config, "use_meanflow", False):
            raise ValueError(f"{type(config).__name__}: use_meanflow=True (a mean-flow model, HunyuanVideo-1.5's "
                             "super-resolution) takes a second timestep that POSE's phases and samplers do not give")
        problems = [] if stand_ins else missing_negative(config, None if negative is None else negative.keys())
        if problems:
            raise ValueError("; ".join(problems))
        self.extra_channels = config.in_channels - config.out_channels
        if self.extra_channels and self.extra_channels < config.out_channels:
            raise ValueError(f"in_channels={config.in_channels} cannot hold the noisy latent and the condition "
                             f"latent ({config.out_channels} channels each)")
        self._image_proj = None
        if stand_ins and "image_states" in self.fields:
            ph, pw = config.patch_size[1:]
            gen = torch.Generator().manual_seed(image_tokens_seed)
            self._image_proj = torch.randn(config.out_channels * ph * pw, config.image_dim, generator=gen)

    def _field(self, batch: dict[str, torch.Tensor], name: str) -> torch.Tensor | None:
        if name in batch:
            return batch[name]
        if not self.stand_ins:
            raise KeyError(f"batch has no {name!r} field (the model is conditioned on it)")
        return None

    def _uncond(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """The negative prompt's ``name`` for every sample of the batch. Masked text (HunyuanVideo) keeps its
        own length, as the pipelines encode it (HunyuanVideo-I2V's negative prompt has another number of
        image tokens than the prompt)."""
        if self.negative is None:  # stand-in: no negative prompt
            return torch.zeros_like(like)
        neg = self.negative[name].to(like.device, like.dtype)
        own_length = name in MASKED_TEXT and ("text_mask" in self.negative or "glyph_mask" in self.negative)
        if neg.shape[own_length:] != like.shape[1 + own_length:]:
            raise ValueError(f"negative prompt {name} has shape {tuple(neg.shape)}; the batch's is "
                             f"{tuple(like.shape[1:])}")
        return neg.expand(like.shape[0], *neg.shape)

    def _stand_in_condition(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The first frame's latent then zeros, with a first-frame mask in the family's channel order (Wan:
        mask first; HunyuanVideo: mask last)."""
        cfg, latents = self.config, batch["latents"]
        first = torch.zeros_like(latents)
        first[:, :, :1] = batch["first_frame"]
        n_mask = self.extra_channels - cfg.out_channels
        mask = torch.zeros(latents.shape[0], n_mask, *latents.shape[2:], dtype=latents.dtype, device=latents.device)
        mask[:, :, :1] = 1
        return torch.cat([first, mask] if isinstance(cfg, HunyuanConfig | HunyuanVideo15Config) else [mask, first],
                         dim=1)

    def _stand_in_image(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        ph, pw = self.config.patch_size[1:]
        patches = batch["first_frame"][:, :, 0].unfold(2, ph, ph).unfold(3, pw, pw)  # b c h w ph pw
        patches = patches.permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)
        return patches @ self._image_proj.to(patches)

    def _hunyuan15(self, batch: dict[str, torch.Tensor], text: torch.Tensor
                   ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """HunyuanVideo-1.5's LLM and glyph text with their masks, conditional and negative (stand-ins: every LLM
        token valid, one masked glyph token)."""
        fields = {name: self._field(batch, name) for name in ("text_mask", "glyph", "glyph_mask")}
        if fields["text_mask"] is None:
            fields["text_mask"] = torch.ones(text.shape[:2], dtype=torch.long, device=text.device)
        if fields["glyph"] is None:
            fields["glyph"] = text.new_zeros(text.shape[0], 1, self.config.glyph_dim)
            fields["glyph_mask"] = torch.zeros(text.shape[0], 1, dtype=torch.long, device=text.device)
        fields["text"] = text
        names = {"text": "encoder_hidden_states", "text_mask": "encoder_attention_mask",
                 "glyph": "encoder_hidden_states_2", "glyph_mask": "encoder_attention_mask_2"}
        cond = {names[k]: v for k, v in fields.items()}
        if self.negative is None:  # stand-in: the same masks, zero tokens
            uncond = {names[k]: v if k.endswith("mask") else torch.zeros_like(v) for k, v in fields.items()}
        else:
            uncond = {names[k]: self._uncond(k, v) for k, v in fields.items()}
        return cond, uncond

    def __call__(self, batch: dict[str, torch.Tensor]) -> Conditions:
        cfg = self.config
        text = batch["text"]
        channels = image = first_frame = frame_tokens = start_image = None
        if self.extra_channels and "condition" not in self.fields:  # HunyuanVideo-1.5 T2V: zeros
            latents = batch["latents"]
            channels = latents.new_zeros(latents.shape[0], self.extra_channels, *latents.shape[2:])
        elif self.extra_channels:
            channels = self._field(batch, "condition")
            if channels is None:
                channels = self._stand_in_condition(batch)
            channels = channels.to(batch["latents"])
        if isinstance(cfg, WanConfig):
            cond = {"encoder_hidden_states": text}
            uncond = {"encoder_hidden_states": self._uncond("text", text)}
            if cfg.image_dim is not None:
                image = self._field(batch, "image_states")
                image = self._stand_in_image(batch) if image is None else image
                cond["encoder_hidden_states_image"] = uncond["encoder_hidden_states_image"] = image
            if cfg.image_condition_type == "token_replace":
                first_frame = batch["first_frame"]
                ph, pw = cfg.patch_size[1:]
                frame_tokens = (first_frame.shape[-2] // ph) * (first_frame.shape[-1] // pw)
        elif isinstance(cfg, HunyuanConfig):
            mask, pooled = self._field(batch, "text_mask"), self._field(batch, "pooled")
            if mask is None:
                mask = torch.ones(text.shape[:2], dtype=torch.long, device=text.device)
            if pooled is None:
                pooled = torch.zeros(text.shape[0], cfg.pooled_dim, dtype=text.dtype, device=text.device)
                pooled[:, : min(cfg.pooled_dim, text.shape[-1])] = text.mean(1)[:, : cfg.pooled_dim]
            cond = {"encoder_hidden_states": text, "encoder_attention_mask": mask, "pooled_projections": pooled}
            uncond = {"encoder_hidden_states": self._uncond("text", text),
                      "encoder_attention_mask": mask if self.negative is None else self._uncond("text_mask", mask),
                      "pooled_projections": self._uncond("pooled", pooled)}
            if cfg.guidance_embeds:
                cond["guidance"] = uncond["guidance"] = torch.full((text.shape[0],), 1000.0, device=text.device)
            if cfg.image_condition_type == "token_replace":
                first_frame = start_image = batch["first_frame"]
            elif channels is not None:  # latent concat: [first-frame latent, zeros | mask]
                start_image = channels[:, : cfg.out_channels, :1]
        elif isinstance(cfg, HunyuanVideo15Config):
            cond, uncond = self._hunyuan15(batch, text)
            if _hunyuan15_i2v(cfg):
                image = self._field(batch, "image_states")
                image = self._stand_in_image(batch) if image is None else image
                cond["image_embeds"] = uncond["image_embeds"] = image
        else:
            raise TypeError(f"no conditioning for {type(cfg).__name__}")
        return Conditions(cond, uncond, channels, text, image, first_frame, frame_tokens, start_image,
                          cond.get("encoder_attention_mask"))
