"""Run under torchrun with 2 ranks: the small training run at TP=1 x DP=2 with the distributed optimizer and 2
accumulation steps, once whole and once stopped after 7 steps and resumed; saves both generators' weights
and metrics for tests/test_train_parallel.py (each rank resumes its own optimiser shards)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_training import SMALL  # noqa: E402

from pose_mcore.config.train import load_train_config  # noqa: E402
from pose_mcore.parallel.state import destroy_parallel  # noqa: E402
from pose_mcore.training.trainer import Trainer  # noqa: E402

LAYOUT = ["tensor_parallel=1", "global_batch_size=8", "distributed_optimizer=true"]  # 2 ranks x 2 micro x 2


def run(out: Path, exit_after: int | None = None, resume: bool = False) -> None:
    Trainer(load_train_config(None, [*SMALL, *LAYOUT, f"output_dir={out}"]), exit_after=exit_after).run(resume=resume)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    work = args.out.parent
    run(work / "whole")
    try:
        run(work / "split", exit_after=7)
    except SystemExit:
        pass
    run(work / "split", resume=True)
    if dist.get_rank() == 0:
        result = {}
        for name in ("whole", "split"):
            lines = (work / name / "metrics.jsonl").read_text().splitlines()
            result[name] = {"generator": load_file(work / name / "generator" / "model-00001-of-00001.safetensors"),
                            "metrics": [json.loads(line) for line in lines]}
        torch.save(result, args.out)
    destroy_parallel()


if __name__ == "__main__":
    main()
