"""Run under torchrun with 2 ranks: one Phase I step and one Phase II step at TP=2 with sequence
parallelism, against the same steps at TP=1 from the same weights and batch; saves losses and the
updated weights (whole tensors) for tests/test_train_parallel.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import phase_fixtures  # noqa: E402
from phase_fixtures import batch_for, phase1_setup, phase2_setup  # noqa: E402

from pose_mcore.config.train import OptimConfig  # noqa: E402

from pose_mcore.parallel.sharding import full_state_dict, load_full_state_dict  # noqa: E402
from pose_mcore.parallel.state import destroy_parallel, initialize_parallel  # noqa: E402


def run(tp: int, reference: dict | None, preset: str) -> dict:
    initialize_parallel(tp, seed=7)
    extra = dict(tensor_model_parallel_size=2, sequence_parallel=True) if tp == 2 else {}
    roles, phase1, cfg = phase1_setup(preset, **extra)
    if reference is not None:
        load_full_state_dict(roles.generator, reference["init.generator"])
        load_full_state_dict(roles.base, reference["init.base"])
    out = {"init.generator": full_state_dict(roles.generator), "init.base": full_state_dict(roles.base)}
    batch = batch_for(cfg, frames=3, height=6, width=6)  # 27 tokens: odd, padded under SP
    out["phase1"] = phase1.step(batch)
    phase2 = phase2_setup(roles, cfg)
    if reference is not None:
        roles.head.load_state_dict(reference["init.head"])
    out["init.head"] = {k: v.clone() for k, v in roles.head.state_dict().items()}
    out["phase2"] = phase2.step(batch)
    for name in ("generator", "base", "ema"):
        out[f"after.{name}"] = full_state_dict(getattr(roles, name))
    out["after.head"] = {k: v.clone() for k, v in roles.head.state_dict().items()}
    return out


def _robust_optimisers() -> None:
    """Adam with eps = 1e-3: gradients that are zero up to rounding (a key bias, which softmax ignores)
    then move weights by ~lr * 1e-9 instead of a full lr-sized step in a rounding-dependent direction,
    so weights after one step can be compared between layouts."""
    for cfg in (phase_fixtures.PHASE1, phase_fixtures.PHASE2):
        for name in ("optim_g", "optim_fake", "optim_d"):
            if hasattr(cfg, name):
                o = getattr(cfg, name)
                setattr(cfg, name, OptimConfig(lr=o.lr, betas=o.betas, eps=1e-3))


def main() -> None:
    _robust_optimisers()
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results = {}
    for preset in ("tiny-t2v", "tiny-i2v"):
        tp1 = run(1, None, preset)
        results[preset] = {"tp1": tp1, "tp2": run(2, tp1, preset)}
    if dist.get_rank() == 0:
        torch.save(results, args.out)
    destroy_parallel()


if __name__ == "__main__":
    main()
