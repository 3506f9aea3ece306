"""Run under torchrun with 4 ranks: one step of every case of tests/phase_fixtures.py's LAYOUT_CASES in four
layouts, from the TP=1 reference's initial weights (``--reference``, written by tests/test_train_parallel.py):
TP=2 (with and without sequence parallelism) x DP=2 and CP=2 x DP=2 with micro-batches of 1 and 2 accumulation
steps, and CP=2 x TP=2 (DP=1: DDP and the distributed optimizer work over the CP ranks) with micro-batches of 2
and 2 accumulation steps, all with the distributed optimizer; saves (rank 0) the metrics, whole gradients,
whole weights and the replica check of each."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from phase_fixtures import layout_step  # noqa: E402

from pose_mcore.engine.optimizer import Engine  # noqa: E402
from pose_mcore.parallel.state import destroy_parallel, initialize_parallel  # noqa: E402

LAYOUTS = {"tp2_dp2": (2, 1, 1, True), "tp2_nosp_dp2": (2, 1, 1, False), "cp2_dp2": (1, 2, 1, False),
           "cp2_tp2": (2, 2, 2, True)}
"""name -> (tp, cp, micro-batch size, sequence parallelism); the global batch is 4 in all, in 2 accumulation
steps."""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--reference", type=Path, required=True)
    parser.add_argument("--layouts", nargs="*", default=list(LAYOUTS))
    args = parser.parse_args()
    reference = torch.load(args.reference)
    results = {}
    for layout in args.layouts:
        tp, cp, micro, sp = LAYOUTS[layout]
        initialize_parallel(tp, cp, seed=7)
        results[layout] = {case: layout_step(case, micro, 2, init, Engine(distributed_optimizer=True),
                                             tensor_model_parallel_size=tp, context_parallel_size=cp,
                                             sequence_parallel=sp)
                           for case, init in reference.items()}
    if dist.get_rank() == 0:
        torch.save(results, args.out)
    destroy_parallel()


if __name__ == "__main__":
    main()
