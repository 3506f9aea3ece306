"""Run under torchrun with 2 ranks: load pose_mcore checkpoints at TP=2 (each rank reading its own
slices) and save the outputs on given inputs, for tests/test_convert.py to compare with TP=1."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from devices import to_device  # noqa: E402

from pose_mcore.checkpoint.load import load_model
from pose_mcore.parallel.state import destroy_parallel, initialize_parallel


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=Path, required=True, help="torch file: {name: (checkpoint dir, inputs)}")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    initialize_parallel(2)
    results = {}
    for name, (path, inputs) in torch.load(args.cases).items():
        inputs = to_device(inputs)
        for sp in (False, True):
            model = load_model(path, sequence_parallel=sp)
            with torch.no_grad():
                results[f"{name}/sp{int(sp)}"] = model(**inputs).sample
    if dist.get_rank() == 0:
        torch.save(results, args.out)
    destroy_parallel()


if __name__ == "__main__":
    main()
