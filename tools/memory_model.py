#!/usr/bin/env python
"""Per-rank memory of every phase step of a training config at full size, traced on fake tensors (no GPU).

Traces rank 0 of the config's layout (megatron-core layers on a fake process group of ``--world`` ranks):
the trainer's own roles, optimisers and phase code on fake tensors, in the config's ``precision`` as it trains
on a GPU (``auto``: bf16 weights, fp32 main weights and gradient buffers, forward passes under bf16 autocast;
``amp``: fp32 weights under autocast; ``fp32``), a micro-batch
of latent videos of the given pixel size, and prints per phase the states (weights of every role, gradient
buffers, main weights and Adam states, the batch; each listed), what the step allocates at its peak, the
total against 80 and 96 GB cards, and the step's matmul and attention TFLOP on rank 0 (recomputation
included). Blocks are traced at depths one and two
and extended linearly (``--full-depth`` traces every block: minutes). See
``pose_mcore.evaluation.memory_model`` for how, and what is not counted (allocator fragmentation, NCCL
buffers, the CUDA context): "fits" keeps 10 % + 2 GiB of the card for those.

    python tools/memory_model.py --config wan2.1-i2v-14b --video 81x480x832
    python tools/memory_model.py --config hunyuan-i2v-13b --video 129x720x1280 phase2.backbone=full
    python tools/memory_model.py --config hunyuan1.5-i2v-720p --video 121x720x1280
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from pose_mcore.notices import quiet_third_party_warnings

quiet_third_party_warnings()  # before megatron-core is imported: it warns at import

from pose_mcore.checkpoint.io import atomic_destination  # noqa: E402
from pose_mcore.cli import resolve_config  # noqa: E402
from pose_mcore.config.base import ConfigError, VideoDiTConfig  # noqa: E402
from pose_mcore.config.hunyuan15 import HunyuanVideo15Config  # noqa: E402
from pose_mcore.config.train import PHASES, TrainConfigError, load_train_config  # noqa: E402
from pose_mcore.evaluation.memory_model import fake_world, phase_step_memory  # noqa: E402
from pose_mcore.training.validate import validate_train_config  # noqa: E402

CARDS_GB = (80, 96)


def vae_spatial(model: VideoDiTConfig) -> int:
    """The pixels per latent of the model's VAE: 16 for HunyuanVideo-1.5's and Wan2.2's 48-channel one, else 8
    (Wan2.1's, HunyuanVideo's)."""
    return 16 if isinstance(model, HunyuanVideo15Config) or model.out_channels == 48 else 8


def latent_shape(video: str, spatial: int = 8) -> tuple[int, int, int]:
    """``FxHxW`` pixels (F = 4k + 1) -> latent frames, height, width (the causal 3-D VAEs: frames 4x plus the first,
    pixels ``spatial`` x)."""
    try:
        f, h, w = (int(x) for x in video.lower().split("x"))
    except ValueError as e:
        raise ValueError(f"--video {video!r}: expected FRAMESxHEIGHTxWIDTH, e.g. 81x480x832") from e
    if min(f, h, w) < 1 or (f - 1) % 4 or h % spatial or w % spatial:
        raise ValueError(f"--video {video}: frames must be 4k+1 and height, width positive multiples of {spatial} "
                         "(this model's VAE)")
    return (f - 1) // 4 + 1, h // spatial, w // spatial


TIGHT_GIB = 5
"""A verdict this close to the card's limit is marked: the trace leaves out fragmentation and NCCL buffers."""


def limit_gib(card_gb: int) -> float:
    """The most a rank's traced total may be on a card of ``card_gb`` GB: 10 % + 2 GiB of it kept as headroom."""
    return (card_gb * 1e9 - 2 * 2**30) / 1.1 / 2**30


def verdict(total_bytes: int, card_gb: int) -> str:
    """``fits`` or ``OOM``, with ``(tight)`` within :data:`TIGHT_GIB` of the limit on either side."""
    margin = limit_gib(card_gb) - total_bytes / 2**30
    return ("fits" if margin >= 0 else "OOM") + (" (tight)" if abs(margin) < TIGHT_GIB else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a training YAML file or the name of a shipped config")
    parser.add_argument("--video", default="81x480x832", help="FRAMESxHEIGHTxWIDTH in pixels")
    parser.add_argument("--world", type=int, default=None,
                        help="ranks (default: the config's tensor_parallel x context_parallel)")
    parser.add_argument("--phase", choices=PHASES, action="append", default=None,
                        help="phases to trace (default: the config's)")
    parser.add_argument("--full-depth", action="store_true", help="trace every block instead of extrapolating")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="also write each phase's bytes (states, step, total) to FILE")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    args = parser.parse_intermixed_args(argv)
    try:
        latent_shape(args.video)  # the form, before the config is read
        config = load_train_config(resolve_config(args.config), args.overrides)
        tp, cp = config.tensor_parallel, config.context_parallel
        world = args.world
        if world is None:  # the config's layout, which the validation checks
            world = tp * cp if min(tp, cp) >= 1 else 1
        elif world < 1:
            raise ValueError(f"--world {world}: must be a number of ranks >= 1")
        # the trainer's validation, less what only the files could say: the trace reads no checkpoint or data
        model_cfg = validate_train_config(config, world, files=False, device_type="cuda")
        frames, height, width = latent_shape(args.video, vae_spatial(model_cfg))
    except (ValueError, KeyError, TrainConfigError, ConfigError) as e:
        print(f"memory_model.py: error: {str(e).replace(chr(10), '; ')}", file=sys.stderr)
        return 2
    precision = ("bf16" if config.bf16("cuda") else "fp32") + " weights" + (
        ", bf16 autocast" if config.autocast("cuda") else "")
    print(f"{config.preset}: video {args.video} (latents {frames}x{height}x{width}), {world} ranks, TP={tp}"
          f"{' + SP' if model_cfg.sequence_parallel else ''}{f' x CP={cp}' if cp > 1 else ''}, "
          f"micro-batch {config.micro_batch_size}, precision {config.precision} on a GPU ({precision}), "
          f"recompute {model_cfg.recompute_granularity or 'off'}; rank 0, GiB")
    print(f"{'phase':<22} {'states':>8} {'step':>8} {'total':>8}  "
          + "  ".join(f"{f'{c} GB (<={limit_gib(c):.1f})':>12}" for c in CARDS_GB) + "  TFLOP/step")
    predicted = {}
    with fake_world(tp, world, cp):
        for phase in args.phase or config.phases:
            start = time.perf_counter()
            mem = phase_step_memory(config, phase, frames, height, width, extrapolate=not args.full_depth,
                                    device_type="cuda")
            name = phase if phase != "phase2" else f"phase2 ({config.phase2.backbone})"
            gib = mem.gib()
            verdicts = "  ".join(f"{verdict(mem.total, c):>12}" for c in CARDS_GB)
            print(f"{name:<22} {gib['states']:8.1f} {gib['step']:8.1f} {gib['total']:8.1f}  {verdicts}"
                  f"  {mem.flops / 1e12:10.1f}   ({time.perf_counter() - start:.0f} s)", flush=True)
            print("    states: " + ", ".join(f"{role} {n / 2**30:.1f}" for role, n in mem.by_role), flush=True)
            predicted[phase] = {"states": mem.states, "step": mem.step, "total": mem.total}
    if args.json is not None:
        with atomic_destination(args.json, overwrite=True) as tmp:
            tmp.write_text(json.dumps(predicted))
    return 0


if __name__ == "__main__":
    sys.exit(main())
