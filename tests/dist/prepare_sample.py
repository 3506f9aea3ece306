"""Run under torchrun with 2 ranks: ``prepare_sample.py PREPARE_ARGS -- SAMPLE_ARGS -- BAD_SAMPLE_ARGS``.
pose-prepare shares the clips over the ranks, then pose-sample runs the generator tensor-parallel (TP=2
with sequence parallelism), in one process group; tests/test_sample.py compares both with single-process
runs. Then pose-sample with a request that only rank 0 reads (an image that does not exist), and
pose-prepare whose negative prompt (encoded by rank 0 alone) fails, must return 2 on every rank, not
leave rank 1 waiting in a collective."""

from __future__ import annotations

import contextlib
import sys
from unittest import mock

from pose_mcore.data.prepare import main as prepare
from pose_mcore.encoders import EncoderError, ModelEncoders
from pose_mcore.inference.sample import main as sample
from pose_mcore.parallel.state import destroy_parallel, initialize_parallel

if __name__ == "__main__":
    argv = sys.argv[1:]
    cut = argv.index("--")
    bad = argv.index("--", cut + 1)
    info = initialize_parallel(2)
    code = prepare(argv[:cut]) or sample(argv[cut + 1:bad])
    if not code:
        refused = sample(argv[bad + 1:])
        code = 0 if refused == 2 else 1
        print(f"rank {info.rank}: the bad request returned {refused}", flush=True)
        bad_prepare = list(argv[:cut])
        bad_prepare[bad_prepare.index("--out") + 1] += "-bad"
        failing = (mock.patch.object(ModelEncoders, "encode_negative", side_effect=EncoderError("injected failure"))
                   if info.rank == 0 else contextlib.nullcontext())
        with failing:
            refused = prepare(bad_prepare)
        code = code or (0 if refused == 2 else 1)
        print(f"rank {info.rank}: the failed negative prompt returned {refused}", flush=True)
    destroy_parallel()
    sys.exit(code)
