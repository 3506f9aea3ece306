"""A model folder's own encoders and decoder: the one definition of what a DiT is conditioned on.

A diffusers-format model folder (``model_index.json``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
``image_encoder/``, ...) is loaded as its diffusers pipeline *without its transformer*; every field is
computed by the pipeline's own functions (``encode_prompt``, ``encode_image``, ``prepare_latents``,
its latent normalisation and ``video_processor``), so a prepared dataset, a training sample and a
``pose-sample`` video see exactly what the diffusers pipeline feeds its transformer. The DiT itself
always comes from pose_mcore.

Fields, per sample (the dataset's manifest keys; :data:`FIELDS`):

- ``latents`` ``[C, f, h, w]``: the clip's VAE latent, normalised as the pipeline normalises latents
  (Wan: ``(z - mean) / std`` per channel; HunyuanVideo: ``z * scaling_factor``); the mode of the
  posterior (deterministic);
- ``text`` ``[L, D]``: the prompt embedding (Wan: umT5, zero-padded to ``max_sequence_length``;
  HunyuanVideo: the LLM's hidden states under the prompt template; HunyuanVideo-1.5: Qwen2.5-VL's under its
  chat template and system message);
- ``text_mask`` ``[L]`` (HunyuanVideo, -1.5): the prompt's attention mask; ``pooled`` ``[P]`` (HunyuanVideo): the
  CLIP text pooler output;
- ``glyph`` ``[G, E]``, ``glyph_mask`` ``[G]`` (HunyuanVideo-1.5): ByT5's encoding of the prompt's quoted text
  (zeros and an all-zero mask for a prompt without any), for text rendered in the video;
- ``image_states`` ``[N, E]`` (Wan2.1 I2V: CLIP ViT penultimate hidden states of the first frame;
  HunyuanVideo-1.5 I2V: SigLIP's last hidden states);
- ``condition`` ``[c, f, h, w]`` (Wan I2V with extra input channels): ``prepare_latents``' frame mask and
  the normalised VAE encoding of ``[first frame, zero frames]``; HunyuanVideo-1.5 I2V: the first frame's
  normalised latent then zeros, and the frame mask (``prepare_cond_latents_and_mask``); its T2V feeds zeros,
  which the conditioner makes (no field);
- ``first_frame`` ``[C, 1, h, w]`` (Wan2.2 TI2V, ``expand_timesteps``; HunyuanVideo-I2V token replace): the
  normalised VAE encoding of the first frame alone.

The negative (or empty) prompt is encoded once per dataset with the same function (``text``, and for
HunyuanVideo ``text_mask`` and ``pooled``). HunyuanVideo-I2V's LLaVA text encoder reads the first frame with
the prompt, so its ``text`` holds image tokens; its negative prompt is encoded with a black frame of the video's
size, as its pipeline does. Its ``condition`` (latent concat) is ``[first-frame latent then zeros | frame
mask]``, as the pipeline's ``__call__`` builds it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

FIELDS = ("latents", "text", "text_mask", "pooled", "glyph", "glyph_mask", "image_states", "condition", "first_frame")
"""Every per-sample field a prepared dataset may hold."""
TEXT_FIELDS = ("text", "text_mask", "pooled", "glyph", "glyph_mask")
"""The fields of an encoded prompt (the negative prompt's too)."""


class EncoderError(ValueError):
    """A model folder that cannot serve as encoders; the message names the folder and what is wrong."""


@dataclass(frozen=True)
class Family:
    """What a diffusers pipeline class needs from its folder."""

    name: str
    """pose_mcore model family: 'wan', 'hunyuan' or 'hunyuan15'."""
    components: tuple[str, ...]
    """Folders the encoders need (besides those the pipeline marks as present)."""
    optional: tuple[str, ...] = ()
    """Components used when ``model_index.json`` lists them (Wan2.1 I2V's CLIP)."""


DIT_COMPONENTS = ("transformer", "transformer_2")
"""Components never loaded: the DiT comes from pose_mcore."""


_HUNYUAN15 = ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler")

PIPELINES: dict[str, Family] = {
    "WanPipeline": Family("wan", ("vae", "text_encoder", "tokenizer", "scheduler")),
    "WanImageToVideoPipeline": Family("wan", ("vae", "text_encoder", "tokenizer", "scheduler"),
                                      optional=("image_encoder", "image_processor")),
    "HunyuanVideoPipeline": Family("hunyuan", ("vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
                                               "scheduler")),
    "HunyuanVideoImageToVideoPipeline": Family("hunyuan", ("vae", "text_encoder", "tokenizer", "text_encoder_2",
                                                           "tokenizer_2", "scheduler", "image_processor")),
    "HunyuanVideo15Pipeline": Family("hunyuan15", _HUNYUAN15),
    "HunyuanVideo15ImageToVideoPipeline": Family("hunyuan15", (*_HUNYUAN15, "image_encoder", "feature_extractor")),
}
"""The diffusers pipelines whose folders pose_mcore reads."""


def vae_spatial_factor(folder: str | Path) -> int:
    """The spatial downsampling of a model folder's VAE, read from ``vae/config.json`` as its pipeline
    reads it (Wan: ``scale_factor_spatial``; HunyuanVideo: ``spatial_compression_ratio``; else 8)."""
    path = Path(folder) / "vae" / "config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    return int(config.get("scale_factor_spatial") or config.get("spatial_compression_ratio") or 8)


def vae_tile_problem(tile: int, spatial: int) -> str | None:
    """Why ``tile`` pixels cannot tile a VAE that downsamples ``spatial`` x (tiles overlap by a quarter, so
    the tile and its stride must both be whole latents), or None."""
    if tile <= 0 or tile % (4 * spatial):
        return (f"must be a positive multiple of {4 * spatial} (this VAE's {spatial}x downsampling, tiles "
                "overlapping by a quarter)")
    return None


def _read_index(folder: Path) -> dict[str, Any]:
    index = folder / "model_index.json"
    if not index.is_file():
        raise EncoderError(f"{folder}: not a diffusers model folder (no model_index.json)")
    try:
        return json.loads(index.read_text())
    except ValueError as e:
        raise EncoderError(f"{index}: not JSON ({e})") from e


def _listed(index: dict[str, Any], name: str) -> bool:
    entry = index.get(name)
    return isinstance(entry, list) and entry[0] is not None


class ModelEncoders:
    """The encoders, VAE and latent normalisation of one diffusers model folder.

    ``ModelEncoders(folder)`` checks the folder before loading anything (a wrong folder raises
    :class:`EncoderError` naming the missing component), then loads the pipeline without its
    transformer. ``prompt_template`` and ``max_sequence_length`` are the pipeline's arguments of the
    same names (their defaults are the pipeline's). ``decode_only``: load the VAE alone (the trainer's
    sample videos; a 14B run's rank 0 has no room for an 11 GB text encoder). ``vae_tile``: encode and
    decode in spatial tiles of that many pixels, overlapping by a quarter (the VAE's ``enable_tiling``;
    diffusers' default is 256): a 720p x 81-frame video in and out of the VAE within a few GB, its
    values blended across tile seams.
    """

    def __init__(self, folder: str | Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 max_sequence_length: int | None = None, prompt_template: dict[str, Any] | None = None,
                 decode_only: bool = False, vae_tile: int | None = None) -> None:
        import diffusers
        import transformers

        diffusers.utils.logging.disable_progress_bar()  # loading bars of tiny files are noise in a log
        transformers.utils.logging.disable_progress_bar()
        self.folder = Path(folder)
        index = _read_index(self.folder)
        class_name = index.get("_class_name")
        if class_name == "WanPipeline" and index.get("expand_timesteps"):
            class_name = "WanImageToVideoPipeline"  # Wan2.2 TI2V: one folder for both; this class encodes images
        if class_name not in PIPELINES:
            raise EncoderError(f"{self.folder}/model_index.json: pipeline {class_name!r} is not supported "
                               f"(supported: {', '.join(PIPELINES)})")
        self.kind = PIPELINES[class_name]
        needed = [c for c in self.kind.components] + [c for c in self.kind.optional if _listed(index, c)]
        if decode_only:
            needed = ["vae"]
        for name in needed:
            if not _listed(index, name):
                raise EncoderError(f"{self.folder}/model_index.json: component {name!r} is missing")
            if not (self.folder / name).is_dir():
                raise EncoderError(f"{self.folder}: component folder {name}/ is missing")
        self.device = torch.device(device)
        skip = {name: None for name in index  # the DiT, and what is not needed, is not loaded
                if name in DIT_COMPONENTS or (_listed(index, name) and name not in needed)}
        try:
            self.pipe = getattr(diffusers, class_name).from_pretrained(self.folder, dtype=dtype, **skip)
        except (OSError, ValueError, KeyError) as e:
            raise EncoderError(f"{self.folder}: cannot load the {class_name} components ({e})") from e
        self.pipe.to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.family = self.kind.name
        self.has_image_encoder = getattr(self.pipe, "image_encoder", None) is not None
        self.expand_timesteps = bool(getattr(self.pipe.config, "expand_timesteps", False))
        self.image_to_video = class_name in ("WanImageToVideoPipeline", "HunyuanVideoImageToVideoPipeline",
                                             "HunyuanVideo15ImageToVideoPipeline")
        self.image_condition_type = None
        """HunyuanVideo-I2V: 'latent_concat' or 'token_replace', from the folder's transformer config."""
        if class_name == "HunyuanVideoImageToVideoPipeline":
            dit = self.folder / "transformer" / "config.json"
            self.image_condition_type = (json.loads(dit.read_text()).get("image_condition_type") if dit.is_file()
                                         else None) or "latent_concat"
        if self.family == "hunyuan15" and max_sequence_length:  # its pipeline reads the length from here
            self.pipe.tokenizer_max_length = max_sequence_length
        self.max_sequence_length = max_sequence_length or {"wan": 512, "hunyuan": 256}.get(
            self.family, getattr(self.pipe, "tokenizer_max_length", None))
        self.prompt_template = prompt_template
        vae = self.pipe.vae
        self.latent_channels = vae.config.z_dim if self.family == "wan" else vae.config.latent_channels
        self.temporal, self.spatial = self.pipe.vae_scale_factor_temporal, self.pipe.vae_scale_factor_spatial
        if vae_tile is not None:
            problem = vae_tile_problem(vae_tile, self.spatial)
            if problem:
                raise EncoderError(f"--vae-tile {vae_tile}: {problem}")
            vae.enable_tiling(tile_sample_min_height=vae_tile, tile_sample_min_width=vae_tile,
                              tile_sample_stride_height=vae_tile * 3 // 4, tile_sample_stride_width=vae_tile * 3 // 4)

    # ---- what the DiT sees -------------------------------------------------------------------------------

    def fields(self) -> tuple[str, ...]:
        """The per-sample fields this model's conditioning consists of."""
        out = ["latents", "text"]
        if self.family == "hunyuan":
            out += ["text_mask", "pooled"]
        if self.family == "hunyuan15":
            out += ["text_mask", "glyph", "glyph_mask"]
        if self.has_image_encoder:
            out.append("image_states")
        if self.image_to_video:
            replace = self.expand_timesteps or self.image_condition_type == "token_replace"
            out.append("first_frame" if replace else "condition")
        return tuple(out)

    def check_frames(self, frames: int, height: int, width: int) -> None:
        """Raise :class:`EncoderError` unless the VAE takes ``frames`` x ``height`` x ``width`` clips."""
        if frames < 1 or (frames - 1) % self.temporal:
            raise EncoderError(f"--frames {frames}: this VAE takes {self.temporal}k+1 frames (e.g. "
                               f"{self.temporal * max(1, (frames - 1) // self.temporal) + 1})")
        patch = 1 if self.family == "hunyuan15" else 2  # the DiT's spatial patch
        for name, v in (("height", height), ("width", width)):
            if v < 1 or v % (patch * self.spatial):
                raise EncoderError(f"--{name} {v}: must be a positive multiple of {patch * self.spatial} "
                                   "(VAE downsampling x DiT patch)")

    @property
    def reads_image_with_prompt(self) -> bool:
        """Whether the prompt's encoding depends on the first frame (HunyuanVideo-I2V's LLaVA)."""
        return self.image_condition_type is not None

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], image: Image.Image | None = None) -> dict[str, torch.Tensor]:
        """``text`` (and for HunyuanVideo ``text_mask``, ``pooled``) of each prompt: ``[B, ...]``, exactly as
        the pipeline's ``encode_prompt`` computes them (HunyuanVideo-I2V: with the first frame ``image``)."""
        if self.family == "wan":
            text, _ = self.pipe.encode_prompt(prompts, do_classifier_free_guidance=False,
                                              max_sequence_length=self.max_sequence_length, device=self.device)
            return {"text": text}
        if self.family == "hunyuan15":
            text, mask, glyph, glyph_mask = self.pipe.encode_prompt(prompt=prompts, device=self.device,
                                                                    batch_size=len(prompts))
            return {"text": text, "text_mask": mask, "glyph": glyph, "glyph_mask": glyph_mask}
        if not self.reads_image_with_prompt:
            return self._hunyuan_prompts(prompts)
        if image is None:
            raise EncoderError(f"{self.folder}: HunyuanVideo-I2V encodes the prompt with the first frame")
        return self._hunyuan_prompts(prompts, image=image,
                                     image_embed_interleave=2 if self.image_condition_type == "latent_concat" else 4)

    def _hunyuan_prompts(self, prompts: list[str], **kwargs: Any) -> dict[str, torch.Tensor]:
        """HunyuanVideo's ``encode_prompt`` with this folder's template and length (``kwargs``: the I2V image)."""
        if self.prompt_template is not None:
            kwargs["prompt_template"] = self.prompt_template
        text, pooled, mask = self.pipe.encode_prompt(prompt=prompts, max_sequence_length=self.max_sequence_length,
                                                     device=self.device, **kwargs)
        return {"text": text, "text_mask": mask, "pooled": pooled}

    @torch.no_grad()
    def encode_negative(self, prompt: str, height: int, width: int) -> dict[str, torch.Tensor]:
        """The negative prompt's fields (unbatched), as the pipeline encodes it for classifier-free guidance
        (HunyuanVideo-I2V: with a black frame of ``height x width`` and its default image interleave)."""
        if self.reads_image_with_prompt:
            fields = self._hunyuan_prompts([prompt], image=Image.new("RGB", (width, height), 0))
        else:
            fields = self.encode_prompts([prompt])
        return {k: v[0] for k, v in fields.items()}

    @torch.no_grad()
    def encode_video(self, frames: list[Image.Image]) -> torch.Tensor:
        """The normalised latent ``[C, f, h, w]`` of a clip of RGB frames (already of the target size)."""
        video = self.pipe.video_processor.preprocess_video(frames)  # [1, 3, F, H, W] in [-1, 1]
        vae = self.pipe.vae
        z = vae.encode(video.to(self.device, vae.dtype)).latent_dist.mode()
        return self.normalise(z)[0]

    def _wan_stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Wan's per-channel latent mean and ``1 / std``, shaped and typed like ``like``, as the pipeline builds
        them."""
        cfg = self.pipe.vae.config
        mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(like.device, like.dtype)
        inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(like.device, like.dtype)
        return mean, inv_std

    def normalise(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latents -> the DiT's latent space, as the pipeline computes it."""
        if self.family != "wan":
            return z * self.pipe.vae.config.scaling_factor
        mean, inv_std = self._wan_stats(z)
        return (z - mean) * inv_std

    def denormalise(self, latents: torch.Tensor) -> torch.Tensor:
        """The DiT's latent space -> VAE latents (the pipeline's decode path)."""
        if self.family != "wan":
            return latents / self.pipe.vae.config.scaling_factor
        mean, inv_std = self._wan_stats(latents)
        return latents / inv_std + mean

    @torch.no_grad()
    def encode_first_frame(self, image: Image.Image, frames: int, height: int, width: int
                           ) -> dict[str, torch.Tensor]:
        """The image-to-video fields of a first frame: ``image_states`` (CLIP) and ``condition`` (mask and
        condition latent) or ``first_frame`` (Wan2.2 TI2V), from the pipeline's ``encode_image`` and
        ``prepare_latents``; ``[1, ...]``."""
        out = {}
        if self.family == "hunyuan15":
            return self._hunyuan15_first_frame(image, frames, height, width) if self.image_to_video else out
        if self.has_image_encoder:
            out["image_states"] = self.pipe.encode_image(image, self.device)
        if self.image_condition_type is not None:  # HunyuanVideo-I2V, as its __call__ builds the condition
            pixels = self.pipe.video_processor.preprocess(image, height, width).to(self.device, self.pipe.vae.dtype)
            _, image_latents = self.pipe.prepare_latents(
                pixels, 1, self.latent_channels, height, width, frames, torch.float32, self.device,
                latents=self._placeholder(frames, height, width), image_condition_type=self.image_condition_type)
            if self.image_condition_type == "token_replace":
                out["first_frame"] = image_latents
            else:
                image_latents[:, :, 1:] = 0
                mask = image_latents.new_ones(image_latents.shape[0], 1, *image_latents.shape[2:])
                mask[:, :, 1:] = 0
                out["condition"] = torch.cat([image_latents, mask], dim=1)
        elif self.image_to_video:
            pixels = self.pipe.video_processor.preprocess(image, height=height, width=width)
            pixels = pixels.to(self.device, dtype=torch.float32)
            prepared = self.pipe.prepare_latents(pixels, 1, self.latent_channels, height, width, frames, torch.float32,
                                                 self.device, latents=self._placeholder(frames, height, width))
            if self.expand_timesteps:
                out["first_frame"] = prepared[1]
            else:
                out["condition"] = prepared[1]
        return out

    def _hunyuan15_first_frame(self, image: Image.Image, frames: int, height: int, width: int
                               ) -> dict[str, torch.Tensor]:
        """HunyuanVideo-1.5 I2V as its ``__call__``: the image cropped to the video's size, SigLIP's tokens of it, and
        ``[first-frame latent then zeros | frame mask]``."""
        image = self.pipe.video_processor.resize(image, height=height, width=width, resize_mode="crop")
        states = self.pipe.encode_image(image=image, batch_size=1, device=self.device, dtype=torch.float32)
        latent, mask = self.pipe.prepare_cond_latents_and_mask(
            latents=self._placeholder(frames, height, width), image=image, batch_size=1, height=height, width=width,
            dtype=torch.float32, device=self.device)
        return {"image_states": states, "condition": torch.cat([latent, mask], dim=1)}

    def _placeholder(self, frames: int, height: int, width: int) -> torch.Tensor:
        """A latent passed to ``prepare_latents`` so that it draws no noise (only the condition is wanted)."""
        return torch.zeros(self.latent_shape(1, frames, height, width), device=self.device)

    def latent_shape(self, batch: int, frames: int, height: int, width: int) -> tuple[int, ...]:
        """The DiT latent shape of ``batch`` clips of ``frames`` x ``height`` x ``width`` pixels."""
        return (batch, self.latent_channels, (frames - 1) // self.temporal + 1, height // self.spatial,
                width // self.spatial)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> np.ndarray:
        """DiT latents ``[B, C, f, h, w]`` -> uint8 RGB frames ``[B, F, H, W, 3]`` (the pipeline's decode and
        post-processing)."""
        vae = self.pipe.vae
        video = vae.decode(self.denormalise(latents.to(self.device, vae.dtype)), return_dict=False)[0]
        frames = self.pipe.video_processor.postprocess_video(video.float(), output_type="np")
        return (np.clip(frames, 0, 1) * 255).round().astype(np.uint8)
