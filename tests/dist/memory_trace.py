"""Run in a fresh process (no process group yet): the memory model's fake-tensor trace of a DiT step against
the same step on real CPU tensors measured by the same tracker, and the depth extrapolation against a full
trace; saves the numbers for tests/test_memory_model.py."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from pose_mcore.config.base import RECOMPUTE_EVERY_BLOCK
from pose_mcore.config.hunyuan import hunyuan_config
from pose_mcore.config.wan import wan_config
from pose_mcore.evaluation.memory_model import _build, fake_world, model_inputs, step_memory, trace

CASES = {"wan_i2v": wan_config("tiny-i2v", num_layers=3),
         "hunyuan_t2v": hunyuan_config("tiny-hunyuan-t2v", num_layers=3, num_single_layers=2)}
SHAPE = (2, 3, 4, 6)  # batch, latent frames, height, width


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results = {}
    with fake_world(1):
        for name, cfg in CASES.items():
            for recompute in (False, True):
                c = dataclasses.replace(cfg, **(RECOMPUTE_EVERY_BLOCK if recompute else {}))
                real = trace(_build(c, torch.float32), lambda c=c: model_inputs(c, *SHAPE), fake=False)
                results[f"{name}/recompute={recompute}"] = {
                    "real": real,
                    "traced": step_memory(cfg, *SHAPE, recompute=recompute, dtype=torch.float32, extrapolate=False),
                    "extrapolated": step_memory(cfg, *SHAPE, recompute=recompute, dtype=torch.float32),
                    "param_bytes": sum(p.numel() * p.element_size() for p in _build(c, torch.float32)().parameters()),
                }
    torch.save({k: {n: (dataclasses.asdict(v) if not isinstance(v, int) else v) for n, v in d.items()}
                for k, d in results.items()}, args.out)


if __name__ == "__main__":
    main()
