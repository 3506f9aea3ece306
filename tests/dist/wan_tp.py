"""Run under torchrun with 2 ranks: the Wan DiT at TP=2 (sequence parallelism off and on) against
the same weights at TP=1, saving both sides for tests/test_wan_parallel.py to compare."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from wan_reference import wan_inputs  # noqa: E402

from pose_mcore.config.wan import RECOMPUTE_EVERY_BLOCK, wan_config  # noqa: E402
from pose_mcore.models.wan import WanModel  # noqa: E402
from pose_mcore.parallel.sequence import finalize_tensor_parallel_grads  # noqa: E402
from pose_mcore.parallel.sharding import full_state_dict, load_full_state_dict  # noqa: E402
from pose_mcore.parallel.state import destroy_parallel, initialize_parallel  # noqa: E402

# name -> (preset, i2v, batch, frames, height, width, per-token timestep, recompute)
CASES = {
    "t2v_odd_tokens": ("tiny-t2v", False, 2, 3, 2, 6, False, False),  # 9 tokens
    "i2v": ("tiny-i2v", True, 2, 2, 4, 6, False, False),  # 12 tokens
    "t2v_per_token_t_recompute": ("tiny-t2v", False, 1, 3, 6, 2, True, True),  # 9 tokens
}


def run(model: WanModel, inputs: dict[str, torch.Tensor], weight: torch.Tensor) -> dict[str, torch.Tensor]:
    inputs = {k: v.clone().requires_grad_(k != "timestep") for k, v in inputs.items()}
    out = model(**inputs).sample
    (out * weight).sum().backward()
    finalize_tensor_parallel_grads(model)
    result = {"out": out.detach()}
    result.update({f"input_grad.{k}": v.grad for k, v in inputs.items() if v.grad is not None})
    result.update({f"grad.{k}": v for k, v in full_state_dict(model, grads=True).items()})
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results = {}
    for name, (preset, i2v, b, f, h, w, per_token, recompute) in CASES.items():
        inputs = wan_inputs(i2v, b, f, h, w, seed=3, per_token_timestep=per_token)
        extra = RECOMPUTE_EVERY_BLOCK if recompute else {}
        initialize_parallel(1, seed=11)
        reference = WanModel(wan_config(preset))
        weights = full_state_dict(reference)
        weight = torch.randn(b, 4, f, h, w, generator=torch.Generator().manual_seed(5))
        results[name] = {"tp1": run(reference, inputs, weight)}
        initialize_parallel(2, seed=11)
        for sp in (False, True):
            model = WanModel(wan_config(preset, tensor_model_parallel_size=2, sequence_parallel=sp, **extra))
            load_full_state_dict(model, weights)
            results[name][f"tp2_sp{int(sp)}"] = run(model, inputs, weight)
    if dist.get_rank() == 0:
        torch.save(results, args.out)
    destroy_parallel()


if __name__ == "__main__":
    main()
