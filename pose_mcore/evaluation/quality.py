"""How good a run's models are on held-out procedural videos: the one-step generator against its teacher at 1 NFE
and at its full step count, measured the same way by the end-of-run report (``evaluation.videos``) and by
``tools/bench_quality.py``.

The held-out set is drawn from seeds the training data never uses (991: real videos for the Frechet distance,
992: the prompts sampled from), so a number says how the model does on videos it has not seen. Sampling runs
the model as it trains (under tensor parallelism every rank calls it and holds the whole output).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.utils.data import default_collate

from pose_mcore.config.base import VideoDiTConfig
from pose_mcore.data.procedural import ProceduralConfig, ProceduralVideos
from pose_mcore.diffusion.samplers import Guidance, euler_sample, guided, student_sample
from pose_mcore.evaluation.metrics import FeatureFD, attribute_scores
from pose_mcore.pose.conditioning import Conditioner

REAL_SEED, PROMPT_SEED = 991, 992


@dataclass
class HeldOut:
    """Held-out real videos and the prompts (with their known attributes) the models are sampled from."""

    real: torch.Tensor
    prompts: dict[str, torch.Tensor]
    colours: torch.Tensor
    fd: FeatureFD

    @classmethod
    def procedural(cls, config: VideoDiTConfig, videos: int, frames: int, height: int, width: int) -> HeldOut:
        """``videos`` real videos and as many prompts of ``frames x height x width`` for a model of ``config``."""
        data = ProceduralConfig.for_model(config, frames, height, width)
        real, prompts = ProceduralVideos(data, videos, seed=REAL_SEED), ProceduralVideos(data, videos, seed=PROMPT_SEED)
        return cls(default_collate([real[i] for i in range(videos)])["latents"],
                   default_collate([prompts[i] for i in range(videos)]), prompts.colours,
                   FeatureFD(config.out_channels))

    def measure(self, videos: torch.Tensor) -> dict[str, float]:
        """FD to the real videos and the attribute scores of generated ``videos`` (latents, one per prompt)."""
        p = self.prompts
        scores = attribute_scores(videos, self.colours, p["colour"], p["direction"], p["first_frame"])
        return {"fd": self.fd.distance(self.real, videos), **scores}


def sample_videos(model: torch.nn.Module, conditioner: Conditioner, prompts: dict[str, torch.Tensor], sampler: str,
                  steps: int, guidance: Guidance, seed: int) -> tuple[torch.Tensor, float]:
    """Videos (fp32, on the CPU) of ``model`` for every prompt, from the noise of ``seed``, and the sampling time per
    video in seconds. ``sampler``: ``teacher`` (Euler, ``steps`` steps, classifier-free ``guidance``: 2 NFE a step
    unless it is 1; per sample for two experts: :func:`~pose_mcore.models.experts.guidance_of`) or ``student``
    (the distilled sampler, ``steps`` steps without guidance)."""
    device = next(model.parameters()).device
    conds = conditioner({k: v.to(device) for k, v in prompts.items()})

    def velocity(fields: dict[str, torch.Tensor]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return lambda x, t: model(conds.inputs(x), conds.timestep(t, x), **fields).sample.float()

    noise = conds.start(torch.randn(prompts["latents"].shape, generator=torch.Generator().manual_seed(seed)).to(device))
    with torch.no_grad():
        velocity(conds.cond)(noise, torch.ones(noise.shape[0], device=device))  # warm-up, outside the timing
        _synchronize(device)
        start = time.perf_counter()
        if sampler == "teacher":
            videos = euler_sample(guided(velocity(conds.cond), velocity(conds.uncond), guidance), noise, steps)
        else:
            videos = student_sample(velocity(conds.cond), noise, steps, mode="renoise",
                                    generator=torch.Generator().manual_seed(seed + 1))
        _synchronize(device)
    return conds.output(videos).float().cpu(), (time.perf_counter() - start) / noise.shape[0]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def report_table(rows: list[dict], image_to_video: bool) -> list[str]:
    """A markdown table of measured rows (``row``, ``nfe``, the :meth:`HeldOut.measure` metrics); the first-frame
    error only for an ``image_to_video`` model (a text-to-video one has no condition to keep)."""
    extra = image_to_video * " first-frame MSE |"
    lines = ["| model | NFE | FD (lower is better) | one shape | colour | direction |" + extra,
             "| --- | ---: | ---: | ---: | ---: | ---: |" + image_to_video * " ---: |"]
    lines += [f"| {r['row']} | {r['nfe']} | {r['fd']:.2f} | {r['one_shape']:.2f} | {r['colour']:.2f} | "
              f"{r['direction']:.2f} |" + image_to_video * f" {r['first_frame_mse']:.4f} |" for r in rows]
    return lines
