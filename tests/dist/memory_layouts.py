"""The memory model at TP=2 and CP=2 against a real 2-rank run. Under torchrun (2 gloo ranks): rank 0's peak
of each phase's step measured on real tensors; with ``--fake`` (a fresh single process): the same
steps traced on a fake process group of 2 ranks. Saves the numbers for tests/test_memory_model.py."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch
import torch.distributed as dist

from pose_mcore.config.train import load_train_config
from pose_mcore.evaluation.memory_model import fake_world, phase_step_memory
from pose_mcore.parallel.state import destroy_parallel, initialize_parallel

SHAPE = (3, 4, 6)  # latent frames, height, width
LAYOUTS = {"tp2": (2, 1), "cp2": (1, 2)}
"""name -> (tensor parallel, context parallel) on 2 ranks."""
PHASES = {"teacher": [], "phase1": [], "phase2-ema": ["phase2.backbone=ema"], "phase2-full": ["phase2.backbone=full"],
          "phase2-frozen": ["phase2.backbone=frozen"]}
"""At TP=2 every phase and backbone mode; at CP=2 Phase II with the EMA backbone (the most roles and
collectives: the generator through the discriminator)."""
LAYOUT_PHASES = {"tp2": tuple(PHASES), "cp2": ("phase2-ema",)}


def steps(layout: str, fake: bool) -> dict:
    out = {}
    for phase in LAYOUT_PHASES[layout]:
        overrides = PHASES[phase]
        run = load_train_config(None, ["preset=tiny-i2v", "micro_batch_size=2", "model.num_layers=2",
                                       "phase1.fake_updates=1", *overrides])  # one update: the same peak as five
        out[phase] = dataclasses.asdict(phase_step_memory(run, phase.split("-")[0], *SHAPE, text_len=7, device_type="cpu",
                                                          fake=fake))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fake", action="store_true")
    args = parser.parse_args()
    results = {}
    if args.fake:
        for name, (tp, cp) in LAYOUTS.items():
            with fake_world(tp, 2, cp):
                results[name] = steps(name, fake=True)
    else:
        for name, (tp, cp) in LAYOUTS.items():
            initialize_parallel(tp, cp)
            results[name] = steps(name, fake=False)
    if not dist.is_initialized() or dist.get_rank() == 0:
        torch.save(results, args.out)
    if dist.is_initialized():
        destroy_parallel()


if __name__ == "__main__":
    main()
