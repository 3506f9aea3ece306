"""Run under torchrun with 2 ranks: ``prepare_sample.py PREPARE_ARGS -- SAMPLE_ARGS``. pose-prepare shares
the clips over the ranks, then pose-sample runs the generator tensor-parallel (TP=2 with sequence
parallelism), in one process group; tests/test_sample.py compares both with single-process runs."""

from __future__ import annotations

import sys

from pose_mcore.data.prepare import main as prepare
from pose_mcore.inference.sample import main as sample
from pose_mcore.parallel.state import destroy_parallel, initialize_parallel

if __name__ == "__main__":
    argv = sys.argv[1:]
    cut = argv.index("--")
    initialize_parallel(2)
    code = prepare(argv[:cut]) or sample(argv[cut + 1:])
    destroy_parallel()
    sys.exit(code)
