"""Run under torchrun with 4 ranks: each model at CP=2 (TP=1), CP=4 and CP=2 x TP=2 (sequence parallelism off
and on) against the same weights at CP=1 TP=1, saving both sides for tests/test_context_parallel.py.

Gradients are compared as DDP would produce them: a CP rank's parameter and input gradients are ``cp x`` its
own part (parallel/context.py), so they are summed over the CP group and divided by its size."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from devices import seeded_randn  # noqa: E402
from model_tp import CASES as TP_CASES  # noqa: E402

from pose_mcore.config.base import RECOMPUTE_EVERY_BLOCK  # noqa: E402
from pose_mcore.parallel.sequence import finalize_tensor_parallel_grads  # noqa: E402
from pose_mcore.parallel.sharding import full_state_dict, load_full_state_dict  # noqa: E402
from pose_mcore.parallel.state import destroy_parallel, initialize_parallel  # noqa: E402

CASES = {name: TP_CASES[name] for name in (
    "wan_t2v_odd_tokens", "wan_i2v", "wan_t2v_per_token_t_recompute", "hunyuan_t2v_odd_tokens",
    "hunyuan_i2v_concat", "hunyuan_i2v_replace_recompute", "hunyuan_i2v_replace_first_frame_split")}
LAYOUTS = {"cp2": (1, 2, False), "cp4": (1, 4, False), "cp2_tp2": (2, 2, False), "cp2_tp2_sp": (2, 2, True)}
"""name -> (tp, cp, sequence parallel)."""


def _over_cp(t: torch.Tensor) -> torch.Tensor:
    cp = parallel_state.get_context_parallel_world_size()
    if cp == 1:
        return t
    t = t.clone()
    dist.all_reduce(t, group=parallel_state.get_context_parallel_group())
    return t / cp


def run(model, inputs: dict[str, torch.Tensor], weight: torch.Tensor) -> dict[str, torch.Tensor]:
    inputs = {k: v.clone().requires_grad_(v.is_floating_point() and k not in ("timestep", "guidance"))
              for k, v in inputs.items()}
    out = model(**inputs).sample
    (out * weight).sum().backward()
    finalize_tensor_parallel_grads(model)
    for p in model.parameters():
        if p.grad is not None:
            p.grad = _over_cp(p.grad)
    result = {"out": out.detach()}
    result.update({f"input_grad.{k}": _over_cp(v.grad) for k, v in inputs.items() if v.grad is not None})
    result.update({f"grad.{k}": v for k, v in full_state_dict(model, grads=True).items()})
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results = {}
    for name, ((build, make_inputs), recompute) in CASES.items():
        extra = RECOMPUTE_EVERY_BLOCK if recompute else {}
        initialize_parallel(1, seed=11)
        inputs = make_inputs()
        reference = build()
        weights = full_state_dict(reference)
        weight = seeded_randn(reference(**inputs).sample.shape, 5)
        results[name] = {"cp1": run(reference, inputs, weight)}
        for layout, (tp, cp, sp) in LAYOUTS.items():
            initialize_parallel(tp, cp, seed=11)
            model = build(tensor_model_parallel_size=tp, context_parallel_size=cp, sequence_parallel=sp, **extra)
            load_full_state_dict(model, weights)
            results[name][layout] = run(model, inputs, weight)
    if dist.get_rank() == 0:
        torch.save(results, args.out)
    destroy_parallel()


if __name__ == "__main__":
    main()
