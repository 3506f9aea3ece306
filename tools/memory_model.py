#!/usr/bin/env python
"""Per-rank memory of one DiT forward + backward at full size, traced on fake tensors (no GPU needed).

Traces rank 0 of a tensor-parallel layout of a preset's real architecture (megatron-core layers on a
fake process group), with every parameter trainable, weights and activations in bf16, and prints the
peak by kind (parameters, gradients, activations, temporaries). See
``pose_mcore.evaluation.memory_model`` for how and what is not counted.

    python tools/memory_model.py --preset wan2.1-i2v-14b --video 81x480x832 --tp 8
    python tools/memory_model.py --preset hunyuan-i2v-13b --video 129x720x1280 --tp 8 --no-recompute
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from pose_mcore.config.hunyuan import HUNYUAN_PRESETS, hunyuan_config
from pose_mcore.config.wan import WAN_PRESETS, wan_config
from pose_mcore.evaluation.memory_model import KINDS, fake_world, step_memory

VAE_STRIDE = (4, 8, 8)  # Wan's and HunyuanVideo's causal 3-D VAEs: frames 4x (plus the first), pixels 8x


def latent_shape(video: str) -> tuple[int, int, int]:
    """``FxHxW`` pixels (F = 4k + 1) -> latent frames, height, width."""
    try:
        f, h, w = (int(x) for x in video.lower().split("x"))
    except ValueError as e:
        raise ValueError(f"--video {video!r}: expected FRAMESxHEIGHTxWIDTH, e.g. 81x480x832") from e
    if (f - 1) % VAE_STRIDE[0] or h % VAE_STRIDE[1] or w % VAE_STRIDE[2]:
        raise ValueError(f"--video {video}: frames must be 4k+1 and height, width multiples of 8")
    return (f - 1) // VAE_STRIDE[0] + 1, h // VAE_STRIDE[1], w // VAE_STRIDE[2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", required=True, help=f"one of {sorted({**WAN_PRESETS, **HUNYUAN_PRESETS})}")
    parser.add_argument("--video", default="81x480x832", help="FRAMESxHEIGHTxWIDTH in pixels")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--tp", type=int, default=8, help="tensor-parallel size (sequence parallel when > 1)")
    parser.add_argument("--extrapolate", action="store_true",
                        help="trace one and two blocks and extend linearly (seconds, an estimate) instead of tracing "
                             "every block (minutes)")
    parser.add_argument("--no-recompute", dest="recompute", action="store_false",
                        help="keep every block's activations (default: every block recomputed in backward)")
    args = parser.parse_args(argv)
    try:
        frames, height, width = latent_shape(args.video)
        make = wan_config if args.preset in WAN_PRESETS else hunyuan_config
        if args.preset not in {**WAN_PRESETS, **HUNYUAN_PRESETS}:
            raise ValueError(f"--preset {args.preset!r}: unknown; known: {sorted({**WAN_PRESETS, **HUNYUAN_PRESETS})}")
        cfg = make(args.preset, tensor_model_parallel_size=args.tp, sequence_parallel=args.tp > 1)
    except ValueError as e:  # ConfigError is a ValueError: heads not divisible by TP and the like
        parser.error(str(e))
    start = time.perf_counter()
    with fake_world(args.tp):
        mem = step_memory(cfg, args.batch, frames, height, width, recompute=args.recompute, dtype=torch.bfloat16,
                          extrapolate=args.extrapolate)
    gib = mem.gib()
    how = "extrapolated" if args.extrapolate else "traced"
    print(f"{args.preset}, video {args.video} (latents {frames}x{height}x{width}), batch {args.batch}, TP={args.tp}"
          f"{' + SP' if args.tp > 1 else ''}, recompute {'every block' if args.recompute else 'off'}, bf16; "
          f"rank 0 at the peak of one forward + backward ({how} in {time.perf_counter() - start:.0f} s):")
    for kind in (*KINDS, "total"):
        print(f"  {kind:<12} {gib[kind]:8.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
