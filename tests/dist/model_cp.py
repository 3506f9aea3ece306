"""Run under torchrun with 4 ranks: each model at CP=2 (TP=1), CP=4 and CP=2 x TP=2 with sequence parallelism
against the same weights at CP=1 TP=1, saving both sides for tests/test_context_parallel.py.

Gradients are compared as DDP produces them: a CP rank holds a share of each gradient, averaged over the CP
group (parallel/context.py)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from model_tp import CASES as TP_CASES  # noqa: E402
from model_tp import compare  # noqa: E402

CASES = {name: TP_CASES[name] for name in (
    "wan_t2v_odd_tokens", "wan_i2v", "wan_t2v_per_token_t_recompute", "hunyuan_t2v_odd_tokens",
    "hunyuan_i2v_concat", "hunyuan_i2v_replace_recompute", "hunyuan_i2v_replace_first_frame_split",
    "hunyuan15_t2v_odd_tokens", "hunyuan15_i2v_recompute", "hunyuan15_meanflow",
    "hunyuan15_i2v_selective_recompute")}
LAYOUTS = {"cp2": (1, 2, False), "cp4": (1, 4, False), "cp2_tp2_sp": (2, 2, True)}
"""name -> (tp, cp, sequence parallel)."""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    compare(CASES, LAYOUTS, parser.parse_args().out)


if __name__ == "__main__":
    main()
