#!/usr/bin/env python
"""Training throughput of a config's phases, two engine settings side by side, on the run's own layout.

Run it under torchrun like the trainer (same config and overrides). For each phase it builds the
trainer's roles and phase (``pose/build.py``) once with the ``--baseline`` engine settings and once with
the config's, takes ``--steps`` optimiser steps of each on the run's data (after one warm-up step each;
the two variants' steps interleaved, so that a busy machine's drift falls on both), and prints per
variant: the median step time, video tokens per second (the global batch's latent tokens per step), the
model states each rank holds (weights, gradient buffers, Adam states: the largest over the ranks), the
peak memory of a step per rank on CUDA, and the TFLOP/s and MFU of the step on CUDA (FLOPs counted by
torch's FLOP counter over one step, recomputed forwards included when activation checkpointing is on;
MFU against ``--peak-tflops``, the card's dense bf16 rate). Ratios are new / baseline.

    torchrun --nproc-per-node 2 tools/bench_train.py --config tiny-cpu                       # DP=2
    torchrun --nproc-per-node 8 tools/bench_train.py --config wan2.1-i2v-14b --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from pose_mcore.notices import quiet_third_party_warnings

quiet_third_party_warnings()  # before megatron-core is imported: it warns at import

from pose_mcore.cli import resolve_config  # noqa: E402
from pose_mcore.config.train import PHASES, TrainConfig, TrainConfigError, load_train_config  # noqa: E402
from pose_mcore.evaluation.memory_model import bytes_by_name, count_cpu_attention, phase_states  # noqa: E402
from pose_mcore.evaluation.timing import timed_side_by_side  # noqa: E402
from pose_mcore.models.registry import family_of_preset  # noqa: E402
from pose_mcore.parallel.state import run_device  # noqa: E402
from pose_mcore.pose.build import build_phase  # noqa: E402
from pose_mcore.pose.phase import Phase  # noqa: E402
from pose_mcore.training.trainer import Trainer  # noqa: E402

VAE_STRIDE = (4, 8, 8)  # frames (plus the first), height, width: latents to the pixels tools/memory_model.py takes

BASELINE = ["distributed_optimizer=false", "overlap_grad_reduce=false"]


def counted_flops(phase: Phase, batches: list[dict[str, torch.Tensor]]) -> int:
    """FLOPs of one step of ``phase`` on this rank, as executed (torch's FLOP counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    count_cpu_attention()
    with FlopCounterMode(display=False) as counter:
        phase.step(batches)
    return counter.get_total_flops()


def build(trainer: Trainer, config: TrainConfig, name: str) -> Phase:
    teacher = family_of_preset(config.preset).build(trainer.model_config).to(trainer.device)
    return build_phase(name, config, teacher, trainer.conditioner, trainer.device,
                       bf16=config.bf16(trainer.device.type), autocast=config.autocast(trainer.device.type))[1]


def predict(config_name: str, overrides: list[str], config: TrainConfig) -> dict[str, dict[str, int]]:
    """The memory model's bytes of each phase's step for this run (rank 0 of its layout; the procedural data's
    latents as pixels), from tools/memory_model.py in a fresh process with CUDA hidden (a fake trace must not
    see a GPU). Called by rank 0 alone, before the process group exists (the others wait for it there)."""
    d = config.data
    video = f"{(d.frames - 1) * VAE_STRIDE[0] + 1}x{d.height * VAE_STRIDE[1]}x{d.width * VAE_STRIDE[2]}"
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "predicted.json"
        tool = Path(__file__).resolve().parent / "memory_model.py"
        proc = subprocess.run([sys.executable, str(tool), "--config", config_name, "--video", video, "--world",
                               os.environ.get("WORLD_SIZE", "1"), "--json", str(out), *overrides], capture_output=True,
                              text=True, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
        if proc.returncode != 0:
            raise ValueError(f"--predict: tools/memory_model.py failed: {proc.stderr.strip()[-2000:]}")
        return json.loads(out.read_text())


def gathered_max(value: float) -> float:
    """The largest ``value`` over the ranks."""
    t = torch.tensor([value], dtype=torch.float64, device=run_device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny-cpu", help="a training YAML file or the name of a shipped config")
    parser.add_argument("--phase", choices=PHASES, action="append", default=None, help="default: the config's")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up step each)")
    parser.add_argument("--baseline", nargs="*", default=BASELINE, metavar="key=value",
                        help=f"engine settings of the baseline (default: {' '.join(BASELINE)})")
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="the card's dense bf16 TFLOP/s for MFU (default: H100 / H200 SXM, 989)")
    parser.add_argument("--predict", action="store_true",
                        help="also print the memory model's prediction of each phase's step (tools/memory_model.py, "
                             "run first with CUDA hidden) beside the step's measured peak")
    parser.add_argument("overrides", nargs="*", metavar="key.path=value", help="config overrides")
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    try:
        path = resolve_config(args.config)
        config = load_train_config(path, args.overrides)
        baseline = load_train_config(path, [*args.overrides, *args.baseline])
        first = int(os.environ.get("RANK", 0)) == 0  # the rank that prints
        predicted = predict(args.config, args.overrides, config) if args.predict and first else {}
        trainer = Trainer(config)
    except (TrainConfigError, ValueError) as e:
        parser.error(str(e))
    cuda = trainer.device.type == "cuda"
    rank0 = trainer.info.rank == 0
    micro_batches = [{k: v.to(trainer.device) for k, v in b.items()} for b in trainer.data.next()]
    cfg = trainer.model_config
    pt, ph, pw = cfg.patch_size
    latents = micro_batches[0]["latents"].shape
    tokens = (latents[2] // pt) * (latents[3] // ph) * (latents[4] // pw) * trainer.data.global_batch
    if rank0:
        info = trainer.info
        print(f"{config.preset}: {info.world_size} ranks, TP={info.tp_size} x CP={info.cp_size} x DP={info.dp_size}, "
              f"micro-batch {config.micro_batch_size} x {trainer.data.accumulation} accumulation x "
              f"{trainer.info.dp_size} = global batch {trainer.data.global_batch}, {tokens} video tokens per step, "
              f"{trainer.device.type}; baseline: {' '.join(args.baseline)}", flush=True)
        print(f"{'phase':<8} {'engine':<9} {'s/step':>8} {'tokens/s':>10} {'states GiB':>11} "
              f"{'peak GiB':>9} {'TFLOP/s':>8} {'MFU':>6}", flush=True)
    for name in args.phase or config.phases:
        variants = {"baseline": build(trainer, baseline, name), "config": build(trainer, config, name)}
        flops = counted_flops(variants["config"], micro_batches)  # the same model work for both engines
        peaks: dict[str, float] = {}
        times = timed_side_by_side({v: lambda p=p: p.step(micro_batches) for v, p in variants.items()}, cuda,
                                   args.steps, peaks)
        rows = {}
        for v, phase in variants.items():
            seconds = gathered_max(times[v] / 1e3)
            states = gathered_max(sum(n for _, n in bytes_by_name(phase_states(phase.roles, phase))) / 2**30)
            peak = gathered_max(peaks[v] / 1024) if cuda else float("nan")
            tflops = gathered_max(flops) / seconds / 1e12
            rows[v] = (seconds, tokens / seconds, states, peak, tflops)
        if rank0:
            for v, (seconds, rate, states, peak, tflops) in rows.items():
                mfu = f"{100 * tflops / args.peak_tflops:5.1f}%" if cuda else "-"
                print(f"{name:<8} {v:<9} {seconds:8.3f} {rate:10.0f} {states:11.3f} "
                      f"{peak:9.2f} {tflops:8.3f} {mfu:>6}", flush=True)
            (s0, _, m0, _, _), (s1, _, m1, _, _) = rows["baseline"], rows["config"]
            print(f"{name:<8} {'ratio':<9} {s1 / s0:8.2f} {s0 / s1:10.2f} {m1 / m0:11.2f}", flush=True)
            if name in predicted:  # what the step adds to the states: the peak the tool traces beside them
                step, peak = predicted[name]["step"] / 2**30, rows["config"][3]
                print(f"{name:<8} {'predicted':<9} step {step:.3f} GiB (tools/memory_model.py) vs measured peak "
                      f"{peak:.3f} GiB: {peak / step:.3f}" + ("" if cuda else " (no CUDA: nothing measured)"),
                      flush=True)
        del variants
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
