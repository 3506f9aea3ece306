"""Run in a fresh process (no process group yet): the memory model's fake-tensor traces of a DiT step and
of every phase's step (the trainer's own code) against the same steps on real CPU tensors measured by the
same counter, and the depth extrapolation against full traces; saves the numbers for
tests/test_memory_model.py."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from pose_mcore.config.base import RECOMPUTE_EVERY_BLOCK
from pose_mcore.config.train import load_train_config
from pose_mcore.config.wan import wan_config
from pose_mcore.evaluation.memory_model import (
    _build,
    fake_world,
    model_flops,
    model_inputs,
    phase_step_memory,
    step_memory,
    trace,
)

SHAPE = (3, 4, 6)  # latent frames, height, width
ONE_FAKE_UPDATE = ["phase1.fake_updates=1"]
"""Phase I's fake-score updates are steps of their own, each freeing what it allocated: one gives the same peak
as the default five at a third of the trace's time."""
PHASE_CASES = {  # name -> (preset, phase, overrides)
    "wan_i2v/teacher": ("tiny-i2v", "teacher", []),
    "wan_i2v/phase1": ("tiny-i2v", "phase1", []),
    "wan_i2v/phase2-ema": ("tiny-i2v", "phase2", ["phase2.backbone=ema"]),
    "wan_i2v/phase2-full": ("tiny-i2v", "phase2", ["phase2.backbone=full"]),
    "wan_i2v/phase2-frozen": ("tiny-i2v", "phase2", ["phase2.backbone=frozen"]),
    "hunyuan_t2v/phase2-ema-conv": ("tiny-hunyuan-t2v", "phase2", ["phase2.head=conv"]),
    # Wan2.2-A14B: the frozen base is both experts; a trace sends a micro-batch to one expert, as a real step of
    # one sample per micro-batch (the shipped configs) does
    "wan_a14b/phase1": ("tiny-i2v-a14b", "phase1", ["micro_batch_size=1"]),
    "wan_a14b/phase2-ema": ("tiny-i2v-a14b", "phase2", ["micro_batch_size=1"]),
    # HunyuanVideo-1.5 I2V: LLM, glyph (256) and SigLIP (729) context tokens, the condition channels
    "hunyuan15_i2v/phase1": ("tiny-hunyuan1.5-i2v", "phase1", []),
    "hunyuan15_i2v/phase2-ema": ("tiny-hunyuan1.5-i2v", "phase2", []),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    results = {}
    with fake_world(1):
        cfg = wan_config("tiny-i2v", num_layers=3)
        for recompute in (False, True):
            c = dataclasses.replace(cfg, **(RECOMPUTE_EVERY_BLOCK if recompute else {}))
            results[f"model/recompute={recompute}"] = {
                "real": trace(_build(c, torch.float32), lambda c=c: model_inputs(c, 2, *SHAPE), fake=False),
                "traced": step_memory(cfg, 2, *SHAPE, recompute=recompute, dtype=torch.float32, extrapolate=False),
                "extrapolated": step_memory(cfg, 2, *SHAPE, recompute=recompute, dtype=torch.float32)}
        for name, (preset, phase, overrides) in PHASE_CASES.items():
            run = load_train_config(None, [f"preset={preset}", "micro_batch_size=2", "model.num_layers=3", *ONE_FAKE_UPDATE,
                                           *overrides])
            results[name] = {
                "real": phase_step_memory(run, phase, *SHAPE, text_len=7, device_type="cpu", fake=False),
                "traced": phase_step_memory(run, phase, *SHAPE, text_len=7, device_type="cpu")}
        for precision in ("auto", "amp", "fp32"):  # as the tool predicts a GPU run
            run = load_train_config(None, ["preset=tiny-i2v", "micro_batch_size=2", "model.num_layers=3", *ONE_FAKE_UPDATE,
                                           f"precision={precision}"])
            results[f"precision/{precision}"] = {
                "traced": phase_step_memory(run, "phase1", *SHAPE, text_len=7, device_type="cuda")}
        run = load_train_config(None, ["preset=tiny-i2v", "micro_batch_size=2", "model.num_layers=4", *ONE_FAKE_UPDATE])
        for phase in ("phase1", "phase2"):  # Phase II: the head reads the 4 default feature layers of 4 blocks
            results[f"wan_i2v/{phase}-extrapolated"] = {
                "traced": phase_step_memory(run, phase, *SHAPE, text_len=7, device_type="cpu"),
                "extrapolated": phase_step_memory(run, phase, *SHAPE, text_len=7, device_type="cpu", extrapolate=True)}
        flops = model_flops(wan_config("tiny-i2v", num_layers=2), 2, *SHAPE, text_len=7)
    out = {k: {n: dataclasses.asdict(v) for n, v in d.items()} for k, d in results.items()}
    out["flops"] = flops
    torch.save(out, args.out)


if __name__ == "__main__":
    main()
