"""``pose-sample``: a distilled generator -> MP4 videos, conditioned and decoded by the model folder's own
encoders and VAE (:class:`pose_mcore.encoders.ModelEncoders`).

    pose-sample --checkpoint GEN_DIR --model MODEL_DIR --prompt "..." [--image first.png] --out video.mp4
    pose-sample --checkpoint GEN_DIR --model MODEL_DIR --prompts prompts.jsonl --out videos/ [--shard K/N]
                [--steps 1|2|4] [--mode renoise|euler] [--shift S] [--seed S] [--height --width --frames]
                [--fps 16] [--negative-prompt TEXT] [--dtype bf16|fp32] [--save-latents] [--vae-tile PX]
                [--image-fit resize|crop]

Under torchrun the generator runs tensor-parallel (with sequence parallelism) over all ranks; rank 0
encodes the prompt and image, shares the conditioning, decodes and writes. ``--prompts``: a JSONL file
of ``{"prompt": ..., "image": ...}`` lines (or a text file, one prompt per line), one video per line,
named ``00000.mp4`` ... in the ``--out`` folder; the seed of line ``i`` is ``seed + i``.

One step is ``x0 = noise - G(noise, t=1)``, the noise drawn as the diffusers pipelines draw it
(``torch.Generator().manual_seed(seed)``, CPU, fp32): the output equals the diffusers pipeline's
(``WanPipeline`` / ``WanImageToVideoPipeline`` / ``HunyuanVideoPipeline`` /
``HunyuanVideoImageToVideoPipeline`` / ``HunyuanVideo15Pipeline`` / ``HunyuanVideo15ImageToVideoPipeline``) with
the exported generator as its transformer, ``num_inference_steps=1``, ``guidance_scale=1.0`` (HunyuanVideo-1.5:
its ``guider`` a ``ClassifierFreeGuidance(guidance_scale=1.0)``) and a ``FlowMatchEulerDiscreteScheduler`` (the Wan
folders ship UniPC, whose one step differs), the same seed and ``max_sequence_length`` (HunyuanVideo-1.5: the
pipeline's ``tokenizer_max_length``). As there, a first frame of any size is resized to the video's
(``--image-fit crop`` covers and centre-crops it instead; HunyuanVideo-1.5 I2V takes no size: the video has the
size its pipeline picks, the bucket of the image's aspect at the model's target size, and the image is cropped
to it),
HunyuanVideo-I2V starts from ``0.999 * noise + 0.001 * image latent``, and with latent concatenation its
video leaves out its first 4 frames (the conditioning image and the three after it: ``--frames 33``
gives 29); ``--save-latents`` keeps every latent frame. More steps use the training sampler
(:func:`pose_mcore.diffusion.samplers.student_sample`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import save_file

from pose_mcore.notices import quiet_third_party_warnings

quiet_third_party_warnings()  # before megatron-core is imported: it warns at import

from pose_mcore.checkpoint.io import CheckpointError, atomic_destination  # noqa: E402
from pose_mcore.checkpoint.load import load_model  # noqa: E402
from pose_mcore.config.base import VideoDiTConfig  # noqa: E402
from pose_mcore.config.hunyuan import HunyuanConfig  # noqa: E402
from pose_mcore.config.hunyuan15 import HunyuanVideo15Config  # noqa: E402
from pose_mcore.data.video import VideoError, fit, read_image, write_mp4  # noqa: E402
from pose_mcore.diffusion.samplers import student_sample  # noqa: E402
from pose_mcore.encoders.model import EncoderError, ModelEncoders  # noqa: E402
from pose_mcore.models.registry import family_of_config  # noqa: E402
from pose_mcore.parallel.rank0 import on_rank0  # noqa: E402
from pose_mcore.parallel.state import destroy_parallel, initialize_parallel, run_device  # noqa: E402
from pose_mcore.pose.conditioning import Conditioner, needs_image, negative_fields, required_fields  # noqa: E402


class SampleError(ValueError):
    """Bad arguments or inputs (exit 2)."""


IMAGE_FITS = ("resize", "crop")
"""How ``--image`` meets ``--height x --width``: the pipeline's resize, or cover and centre-crop."""


@dataclass(frozen=True)
class Request:
    prompt: str
    image: Path | None
    seed: int
    out: Path


def requests(args: argparse.Namespace) -> list[Request]:
    """The videos to make: one ``--prompt``, or one per line of ``--prompts``."""
    if (args.prompt is None) == (args.prompts is None):
        raise SampleError("give exactly one of --prompt and --prompts")
    index, count = parse_shard(args.shard)
    if args.prompt is not None:
        if count > 1:
            raise SampleError(f"--shard {args.shard}: shares a --prompts list; one --prompt is one video")
        return [Request(args.prompt, args.image, args.seed, args.out)]
    if not args.prompts.is_file():
        raise SampleError(f"--prompts {args.prompts}: no such file")
    out = []
    for n, line in enumerate(args.prompts.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        if args.prompts.suffix == ".jsonl":
            try:
                row = json.loads(line)
                prompt, image = row["prompt"], row.get("image")
            except (ValueError, KeyError, TypeError) as e:
                raise SampleError(f"{args.prompts}:{n}: want {{\"prompt\": ..., \"image\": ...}} ({e})") from e
        else:
            prompt, image = line.strip(), None
        image = args.prompts.parent / image if image else args.image
        out.append(Request(prompt, image, args.seed + len(out), args.out / f"{len(out):05d}.mp4"))
    if not out:
        raise SampleError(f"--prompts {args.prompts}: no prompts")
    return out[index::count]


def parse_shard(text: str) -> tuple[int, int]:
    """``--shard K/N``: this job makes the videos of lines ``K, K + N, ...`` (their names and seeds unchanged), so
    N jobs (nodes) share a prompt list; default ``0/1``."""
    try:
        index, count = (int(x) for x in text.split("/"))
    except ValueError as e:
        raise SampleError(f"--shard {text}: expected K/N (e.g. 0/4)") from e
    if count < 1 or not 0 <= index < count:
        raise SampleError(f"--shard {text}: need 0 <= K < N")
    return index, count


def video_size(encoders: ModelEncoders, config: VideoDiTConfig, request: Request, height: int, width: int
               ) -> tuple[int, int]:
    """The video's ``(height, width)``: ``--height x --width``, except for HunyuanVideo-1.5 I2V, whose pipeline takes
    no size: the bucket of the first frame's aspect at the model's ``target_size``, as its ``__call__`` picks it."""
    if not (isinstance(config, HunyuanVideo15Config) and needs_image(config) and request.image is not None):
        return height, width
    image = read_image(request.image)
    return encoders.pipe.video_processor.calculate_default_height_width(image.height, image.width,
                                                                         config.target_size)


def conditioning(encoders: ModelEncoders, config: VideoDiTConfig, request: Request, negative_prompt: str,
                 frames: int, height: int, width: int, image_fit: str = "resize") -> dict[str, torch.Tensor]:
    """The batch of one request for a generator of ``config``: the dataset's fields (batch 1; no latents) and
    the encoded ``negative_prompt`` (``negative_<field>``, unbatched).

    ``image_fit="resize"`` hands the first frame to the encoders as the diffusers pipeline does: the VAE's
    condition is the image resized (stretched) to ``height x width`` by the pipeline's ``video_processor``, the
    image encoder (CLIP, LLaVA) sees it at its own size. ``"crop"`` first covers and centre-crops it to
    ``height x width`` (as ``pose-prepare`` fits video frames), keeping its aspect ratio."""
    if image_fit not in IMAGE_FITS:
        raise SampleError(f"--image-fit {image_fit}: choose one of {', '.join(IMAGE_FITS)}")
    if drops_first_frames(config) and frames <= encoders.temporal:
        raise SampleError(f"--frames {frames}: HunyuanVideo-I2V with latent concatenation leaves out the first "
                          f"{encoders.temporal} frames; give at least {2 * encoders.temporal + 1}")
    image = None
    if needs_image(config):
        if request.image is None:
            raise SampleError(f"the generator ({type(config).__name__}) is image-to-video: give --image")
        if not encoders.image_to_video:
            raise SampleError(f"{encoders.folder}: its pipeline does not encode images")
        image = read_image(request.image)
        if image_fit == "crop":
            image = fit(image, height, width)
    elif request.image is not None:
        raise SampleError("the generator is text-to-video: --image does not apply")
    batch = encoders.encode_prompts([request.prompt], image if encoders.reads_image_with_prompt else None)
    batch.update({f"negative_{k}": v for k, v in encoders.encode_negative(negative_prompt, height, width).items()
                  if k in negative_fields(config)})
    if image is not None:
        batch.update(encoders.encode_first_frame(image, frames, height, width))
    return {k: v.cpu() for k, v in batch.items()}


@torch.no_grad()
def generate(model: torch.nn.Module, batch: dict[str, torch.Tensor], shape: tuple[int, ...], seed: int, steps: int = 1,
             shift: float = 1.0, mode: str = "renoise") -> torch.Tensor:
    """The generator's sample ``[1, C, f, h, w]`` (fp32) for a conditioning batch (as :func:`conditioning`
    gives it), from the noise of ``seed``."""
    device = run_device()
    fields = {k: v.to(device) for k, v in batch.items() if not k.startswith("negative_")}
    negative = {k.removeprefix("negative_"): v.to(device) for k, v in batch.items() if k.startswith("negative_")}
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(shape, generator=gen, dtype=torch.float32)
    fields["latents"] = torch.zeros(shape, device=device)  # shape only: the condition is in its own fields
    conds = Conditioner(model.config, negative)(fields)
    dtype = next(model.parameters()).dtype

    def velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        kwargs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in conds.cond.items()}
        return model(conds.inputs(x).to(dtype), conds.timestep(t, x), **kwargs).sample.float()

    return conds.output(student_sample(velocity, conds.start(noise.to(device)), steps, shift, mode, generator=gen))


def drops_first_frames(config: VideoDiTConfig) -> bool:
    """Whether the video leaves out the first VAE frame group: HunyuanVideo-I2V with latent concatenation,
    whose diffusers pipeline (and official sampler) drop it."""
    return isinstance(config, HunyuanConfig) and config.image_condition_type == "latent_concat"


def video(encoders: ModelEncoders, config: VideoDiTConfig, x0: torch.Tensor) -> np.ndarray:
    """The uint8 frames ``[F, H, W, 3]`` of one sample's latents ``x0 [1, C, f, h, w]``, as the model's
    diffusers pipeline makes them."""
    frames = encoders.decode(x0)[0]
    return frames[encoders.temporal:] if drops_first_frames(config) else frames


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pose-sample", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True, help="the generator (pose_mcore checkpoint folder)")
    p.add_argument("--model", type=Path, required=True, help="diffusers model folder: encoders and VAE")
    p.add_argument("--prompt")
    p.add_argument("--prompts", type=Path, help=".jsonl of {prompt, image} or a text file of prompts")
    p.add_argument("--image", type=Path, help="first frame (image-to-video)")
    p.add_argument("--shard", default="0/1", metavar="K/N",
                   help="with --prompts: make lines K, K+N, ... only (names and seeds as in the whole list), so that N "
                        "jobs or nodes share the list")
    p.add_argument("--image-fit", choices=IMAGE_FITS, default="resize",
                   help="resize: as the diffusers pipeline (the VAE sees the image stretched to the output size, the "
                        "image encoder the original); crop: cover and centre-crop it to the output size first")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--out", type=Path, required=True, help="MP4 file (--prompt) or folder (--prompts)")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--mode", choices=("renoise", "euler"), default="renoise", help="sampler for --steps > 1")
    p.add_argument("--shift", type=float, default=1.0, help="time shift of the few-step grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--fps", type=float, default=16.0)
    p.add_argument("--save-latents", action="store_true",
                   help="also write each video's latents (fp32, the DiT's space) as <video>.safetensors")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default=None,
                   help="generator and encoder dtype (default: bf16 on a GPU, fp32 on the CPU)")
    p.add_argument("--max-sequence-length", type=int, default=None)
    p.add_argument("--prompt-template", type=Path, default=None, help="HunyuanVideo: JSON {template, crop_start}")
    p.add_argument("--vae-tile", type=int, default=None, metavar="PX",
                   help="encode and decode in spatial tiles of PX pixels (e.g. 256), for large videos")
    args = p.parse_args(argv)
    if args.steps < 1:
        raise SampleError(f"--steps {args.steps}: must be positive")
    return args


def _prompt_template(path: Path | None) -> dict | None:
    if path is None:
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SampleError(f"--prompt-template {path}: {e}") from e


def check_pair(encoders: ModelEncoders, config: VideoDiTConfig, args: argparse.Namespace) -> None:
    """The generator and the model folder belong together: the same family, the generator's latents those the
    folder's VAE decodes, every field it is conditioned on one the folder's encoders give."""
    family = family_of_config(config).name
    if family != encoders.family:
        raise SampleError(f"--checkpoint {args.checkpoint} holds a {family} generator but --model {args.model} is a "
                          f"{encoders.family} folder: give the diffusers folder of the generator's teacher")
    if config.out_channels != encoders.latent_channels:
        raise SampleError(f"--checkpoint {args.checkpoint} makes {config.out_channels}-channel latents but the VAE of "
                          f"--model {args.model} decodes {encoders.latent_channels}: give the folder of its teacher")
    missing = [f for f in required_fields(config) if f not in encoders.fields()]
    if missing:
        raise SampleError(f"--checkpoint {args.checkpoint} is conditioned on {', '.join(missing)}, which --model "
                          f"{args.model} does not encode (it gives {', '.join(encoders.fields())}): give the folder of "
                          "its teacher")


def run(args: argparse.Namespace) -> int:
    todo = requests(args)
    world = int(os.environ.get("WORLD_SIZE", 1))
    info = initialize_parallel(world, seed=args.seed)
    device = run_device()
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(args.dtype) or (
        torch.bfloat16 if device.type == "cuda" else torch.float32)

    def build_encoders() -> ModelEncoders:
        encoders = ModelEncoders(args.model, device, dtype, args.max_sequence_length,
                                 _prompt_template(args.prompt_template), vae_tile=args.vae_tile)
        encoders.check_frames(args.frames, args.height, args.width)
        return encoders

    encoders = on_rank0(build_encoders, share=False)
    try:
        model = load_model(args.checkpoint, sequence_parallel=world > 1, params_dtype=dtype)
    except CheckpointError as e:
        raise SampleError(f"--checkpoint: {e}") from e
    on_rank0(partial(check_pair, encoders, model.config, args), share=False)

    def request_inputs(request: Request) -> tuple[dict[str, torch.Tensor], tuple[int, ...]]:
        height, width = video_size(encoders, model.config, request, args.height, args.width)
        batch = conditioning(encoders, model.config, request, args.negative_prompt, args.frames, height, width,
                             args.image_fit)
        return batch, encoders.latent_shape(1, args.frames, height, width)

    for request in todo:
        shared = on_rank0(partial(request_inputs, request))
        x0 = generate(model, *shared, request.seed, args.steps, args.shift, args.mode)
        if info.rank == 0:
            request.out.parent.mkdir(parents=True, exist_ok=True)
            with atomic_destination(request.out, overwrite=True) as tmp:
                write_mp4(video(encoders, model.config, x0), tmp, args.fps)
            if args.save_latents:
                with atomic_destination(request.out.with_suffix(".safetensors"), overwrite=True) as tmp:
                    save_file({"latents": x0[0].cpu().contiguous()}, tmp)
            print(f"pose-sample: {request.out} ({request.prompt!r}, seed {request.seed})", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    owns_groups = not dist.is_initialized()  # an embedding process (a test) keeps its own
    try:
        return run(parse_args(argv))
    except (SampleError, EncoderError, VideoError) as e:
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"pose-sample: error: {e}", file=sys.stderr)
        return 2
    finally:
        if owns_groups:
            destroy_parallel()
