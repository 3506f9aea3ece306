#!/usr/bin/env python
"""Does POSE work? The paper's comparisons at CPU scale, on the procedural moving-shapes videos.

One teacher (a tiny Wan I2V DiT pre-trained here), the same data, seeds and evaluation set for
every row: the teacher at 100 NFE (50 Euler steps with CFG), 4 NFE and 1 NFE; Phase I only; Phase II
without priming; full POSE (Phase I then Phase II) at 1 and 4 steps; and the ablations of the
paper's Table 3: backbone ema vs frozen, semantic vs convolutional head, frame consistency weight
10 vs 0; and POSE with only the generator's linear layers trained (``generator_params=linears``: an exact
LoRA in diffusers). Then Wan2.2-I2V-A14B's shape: a teacher of two experts switched at t = 0.9 (each trained
on its own times), sampled with the switch at 100, 4 and 1 NFE, and POSE over it with the generator started
from the high-noise and from the low-noise expert. Each row reports the Frechet distance in a fixed random 3-D
conv feature space against held-out real videos (lower is better), the attribute scores the known data allow,
and the sampling latency on this machine.

With --seeds every row is trained and measured at each seed (each trains its own teacher), and the
summary gives every metric's mean, standard deviation over the seeds and per-seed values, and each of the
paper's orderings with the number of seeds it holds at. Writes under --out (default docs/results/):
quality.md (the summary), quality.json (the same, machine-readable), quality_vs_latency.png (mean FD
with +- one standard deviation), and per seed seed-<S>/ with its own table, JSON, plot and
samples/<row>.gif (real videos on the left, samples on the right). A seed whose seed-<S>/quality.json
exists is read back, so a long run that stops keeps its finished seeds; the total time is printed.

    python tools/bench_quality.py --seeds 1234,7,11,23,42   # the published comparison (per seed: ~30 min)
    python tools/bench_quality.py --quick --seeds 1,2       # tiny sizes, a few minutes: checks that it runs
    python tools/bench_quality.py --seeds 1234,7 --rows "teacher 1 NFE;POSE, 1 step"   # some rows only
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
import statistics
import time
from pathlib import Path

import torch

from pose_mcore.notices import quiet_third_party_warnings

quiet_third_party_warnings()  # before megatron-core is imported: it warns at import

from pose_mcore.checkpoint.load import load_model  # noqa: E402
from pose_mcore.config.train import load_train_config  # noqa: E402
from pose_mcore.evaluation.quality import HeldOut, sample_videos  # noqa: E402
from pose_mcore.pose.conditioning import Conditioner  # noqa: E402
from pose_mcore.training.logging import save_video_grid  # noqa: E402
from pose_mcore.training.trainer import Trainer  # noqa: E402

FULL = dict(teacher=1500, phase1=300, phase2=300, eval_size=128, frames=5, size=16, guidance=3.0)
QUICK = dict(teacher=30, phase1=6, phase2=6, eval_size=16, frames=3, size=8, guidance=3.0)
BASE = ["preset=tiny-i2v", "micro_batch_size=8", "deterministic=true",  # the same numbers twice on a GPU too
        "log_every=50", "teacher.optim.lr=2e-3", "teacher.optim.warmup_steps=50",
        "phase1.optim_g.lr=1e-4", "phase1.optim_fake.lr=1e-3", "phase1.fake_updates=2", "phase1.real_guidance=3.0",
        "phase1.shift=1.0", "phase1.lora_rank=8", "phase1.lora_alpha=8", "phase2.optim_g.lr=5e-5",
        "phase2.optim_d.lr=1e-4", "phase2.ema_decay=0.99", "phase2.head_dim=32", "phase2.head_queries=4",
        "phase2.head_heads=2", "phase2.r1_weight=0.1", "phase2.shift=1.0", "phase2.t_max=0.5"]
# phase2.t_max: the frame consistency loss compares x0 with the teacher's one-step estimate, which a tiny
# teacher makes blurry at high noise; drawn from t <= 0.5 it keeps the condition without pulling toward
# blur (with t up to 0.98, POSE 1 step lost to Phase I only at seed 7: docs/results/quality_seed7.md).


def train(workdir: Path, name: str, sizes: dict, overrides: list[str]) -> Path:
    """Run one training configuration (skipped when its generator already exists); return the generator."""
    run = workdir / name
    if (run / "generator" / "config.json").is_file():
        return run / "generator"
    shutil.rmtree(run, ignore_errors=True)
    data = [f"data.frames={sizes['frames']}", f"data.height={sizes['size']}", f"data.width={sizes['size']}"]
    steps = [f"teacher.steps={sizes['teacher']}", f"phase1.steps={sizes['phase1']}", f"phase2.steps={sizes['phase2']}"]
    config = load_train_config(None, [*BASE, *data, *steps, f"output_dir={run}", *overrides])
    print(f"== training {name}: phases {config.phases}", flush=True)
    return Trainer(config).run()


def plot(rows: list[dict], path: Path, spread: bool = False) -> None:
    """FD against latency (log scale), one labelled point per row, drawn with PIL; with ``spread``, the
    mean FD over seeds with a bar of +- one standard deviation."""
    from PIL import Image, ImageDraw

    w, h, pad = 900, 560, 70
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    lat = [math.log10(max(r["latency_ms"], 1e-3)) for r in rows]
    fds = [r["fd"] for r in rows]
    stds = [r.get("fd_std", 0.0) if spread else 0.0 for r in rows]
    lx0, lx1 = min(lat) - 0.1, max(lat) + 0.1
    fy0, fy1 = 0.0, max(f + s for f, s in zip(fds, stds, strict=True)) * 1.1 + 1e-9
    d.line([(pad, h - pad), (w - pad, h - pad)], fill="black")
    d.line([(pad, pad), (pad, h - pad)], fill="black")
    d.text((w // 2 - 120, h - pad + 30), "sampling latency per video (ms, log10 scale)", fill="black")
    d.text((10, pad - 30), "Frechet distance (lower is better)", fill="black")
    placed: list[tuple[float, float]] = []
    for r, x, y in sorted(zip(rows, lat, fds, strict=True), key=lambda item: item[2]):
        px = pad + (x - lx0) / (lx1 - lx0) * (w - 2 * pad)
        py = h - pad - (y - fy0) / (fy1 - fy0) * (h - 2 * pad)
        colour = "red" if r["row"].startswith("POSE") else ("blue" if r["row"].startswith("teacher") else "gray")
        d.ellipse([px - 5, py - 5, px + 5, py + 5], fill=colour)
        if spread:
            half = r["fd_std"] / (fy1 - fy0) * (h - 2 * pad)
            d.line([(px, py - half), (px, py + half)], fill=colour, width=2)
            d.line([(px - 4, py - half), (px + 4, py - half)], fill=colour)
            d.line([(px - 4, py + half), (px + 4, py + half)], fill=colour)
        label_y = py - 6
        while any(abs(label_y - ly) < 13 and abs(px - lx) < 200 for lx, ly in placed):
            label_y -= 13  # keep labels of nearby points apart
        placed.append((px, label_y))
        d.text((px + 8, label_y), r["row"], fill=colour)
    for k in range(6):
        value = fy0 + (fy1 - fy0) * k / 5
        py = h - pad - k / 5 * (h - 2 * pad)
        d.line([(pad - 4, py), (pad, py)], fill="black")
        d.text((pad - 40, py - 6), f"{value:.0f}", fill="black")
    for tick in range(math.floor(lx0), math.ceil(lx1) + 1):
        px = pad + (tick - lx0) / (lx1 - lx0) * (w - 2 * pad)
        if pad <= px <= w - pad:
            d.text((px - 10, h - pad + 8), f"{10 ** tick:g}", fill="black")
    img.save(path)


CLAIMS = [  # (statement, better row, worse row): "better" means a lower FD
    ("POSE 1 step beats teacher 1 NFE", "POSE, 1 step", "teacher 1 NFE"),
    ("POSE 1 step beats Phase I only", "POSE, 1 step", "Phase I only, 1 step"),
    ("Phase II after priming beats Phase II without it", "POSE, 1 step", "Phase II without priming, 1 step"),
    ("the semantic head beats the conv head", "POSE, 1 step", "ablation: conv head, 1 step"),
    ("the EMA backbone beats the frozen one", "POSE, 1 step", "ablation: frozen backbone, 1 step"),
    ("the consistency loss helps", "POSE, 1 step", "ablation: consistency weight 0, 1 step"),
    ("POSE 4 steps beats POSE 1 step", "POSE, 4 steps", "POSE, 1 step"),
    ("training every parameter beats the linears only", "POSE, 1 step", "exact LoRA (linears only), POSE 1 step"),
    ("two experts: POSE 1 step beats their teacher at 1 NFE", "two experts: POSE, 1 step, init high",
     "two experts: teacher 1 NFE"),
    ("two experts: the generator from the high-noise expert beats the one from the low-noise expert",
     "two experts: POSE, 1 step, init high", "two experts: POSE, 1 step, init low"),
]
METRICS = ("fd", "one_shape", "colour", "direction", "motion_jitter", "first_frame_mse", "latency_ms")


A14B = ["preset=tiny-i2v-a14b"]
RUNS: dict[str, tuple[str | None, str | None, list[str]]] = {
    # run: (its teacher run, the run whose generator it starts from, its overrides)
    "teacher": (None, None, ["phases=[teacher]"]),
    "phase1": ("teacher", None, ["phases=[phase1]"]),
    "phase2_no_priming": ("teacher", None, ["phases=[phase2]"]),
    "pose": ("teacher", "phase1", ["phases=[phase2]"]),
    "pose_frozen_backbone": ("teacher", "phase1", ["phases=[phase2]", "phase2.backbone=frozen"]),
    "pose_conv_head": ("teacher", "phase1", ["phases=[phase2]", "phase2.head=conv"]),
    "pose_no_consistency": ("teacher", "phase1", ["phases=[phase2]", "phase2.consistency_weight=0"]),
    "phase1_linears": ("teacher", None, ["phases=[phase1]", "phase1.generator_params=linears"]),
    "pose_linears": ("teacher", "phase1_linears", ["phases=[phase2]", "phase2.generator_params=linears"]),
    # Wan2.2-I2V-A14B's shape at toy scale: two experts switched at t = 0.9 (no CLIP branch), trained with the
    # one-model teacher's recipe (t uniform: the high-noise expert sees a tenth of the samples, those of its times)
    "teacher_a14b": (None, None, ["phases=[teacher]", *A14B]),
    "phase1_a14b_high": ("teacher_a14b", None, ["phases=[phase1]", *A14B, "generator_init=high"]),
    "pose_a14b_high": ("teacher_a14b", "phase1_a14b_high", ["phases=[phase2]", *A14B]),
    "phase1_a14b_low": ("teacher_a14b", None, ["phases=[phase1]", *A14B, "generator_init=low"]),
    "pose_a14b_low": ("teacher_a14b", "phase1_a14b_low", ["phases=[phase2]", *A14B]),
}
"""Every training run of one seed and what it starts from (each is trained once, when a row needs it)."""

ROWS = [  # (row, run, sampler, steps, NFE)
    ("teacher 100 NFE", "teacher", "teacher", 50, 100), ("teacher 4 NFE", "teacher", "teacher", 2, 4),
    ("teacher 1 NFE", "teacher", "student", 1, 1), ("Phase I only, 1 step", "phase1", "student", 1, 1),
    ("Phase II without priming, 1 step", "phase2_no_priming", "student", 1, 1),
    ("POSE, 1 step", "pose", "student", 1, 1), ("POSE, 4 steps", "pose", "student", 4, 4),
    ("ablation: frozen backbone, 1 step", "pose_frozen_backbone", "student", 1, 1),
    ("ablation: conv head, 1 step", "pose_conv_head", "student", 1, 1),
    ("ablation: consistency weight 0, 1 step", "pose_no_consistency", "student", 1, 1),
    ("exact LoRA (linears only), POSE 1 step", "pose_linears", "student", 1, 1),
    ("two experts: teacher 100 NFE", "teacher_a14b", "teacher", 50, 100),
    ("two experts: teacher 4 NFE", "teacher_a14b", "teacher", 2, 4),
    ("two experts: teacher 1 NFE", "teacher_a14b", "student", 1, 1),
    ("two experts: POSE, 1 step, init high", "pose_a14b_high", "student", 1, 1),
    ("two experts: POSE, 1 step, init low", "pose_a14b_low", "student", 1, 1),
]
"""Every row of the table: the run whose generator it samples, and how."""


def run_seed(seed: int, sizes: dict, out: Path, work: Path, overrides: list[str], quick: bool,
             names: list[str]) -> list[dict]:
    """Train and evaluate the rows ``names`` at one seed; writes ``out`` (table, JSON, plot, samples) and
    returns them. Rows already in ``out``'s ``quality.json`` are read back, not run again (runs resume seed by
    seed, and a later ``--rows`` adds its rows to a finished seed)."""
    done = out / "quality.json"
    measured = {r["row"]: r for r in json.loads(done.read_text())} if done.is_file() else {}
    if all(name in measured for name in names):
        print(f"== seed {seed}: already measured ({done})", flush=True)
        return [measured[name] for name in names]
    seed_args = [f"seed={seed}", *overrides]
    trained: dict[str, Path] = {}

    def run(name: str) -> Path:
        if name not in trained:
            teacher, start, extra = RUNS[name]
            args = [*seed_args, *extra]
            if teacher is not None:
                args.append(f"teacher_checkpoint={run(teacher)}")
            if start is not None:
                args.append(f"generator_checkpoint={run(start)}")
            trained[name] = train(work, name, sizes, args)
        return trained[name]

    held = None  # the same videos for every row: every model here has the same latent channels and text width
    for name, run_name, sampler, steps, nfe in ROWS:
        if name not in names or name in measured:
            continue
        model = load_model(run(run_name))
        held = held or HeldOut.procedural(model.config, sizes["eval_size"], sizes["frames"], sizes["size"],
                                          sizes["size"])
        conditioner = Conditioner(model.config, stand_ins=True)  # the A14B rows have no CLIP image tokens
        videos, latency = sample_videos(model, conditioner, held.prompts, sampler, steps, sizes["guidance"], seed)
        metrics = {**held.measure(videos), "latency_ms": 1000 * latency}
        measured[name] = {"row": name, "nfe": nfe, **metrics}
        slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        save_video_grid(torch.cat([held.prompts["latents"][:4], videos[:4]]), out / "samples" / f"{slug}.gif")
        print(f"{name:<40} FD {metrics['fd']:9.3f}  latency {metrics['latency_ms']:8.2f} ms", flush=True)
    kept = [measured[name] for name, *_ in ROWS if name in measured]  # every row of this seed, in table order
    write_table(kept, out, sizes, seed, quick)
    plot(kept, out / "quality_vs_latency.png")
    return [measured[name] for name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("docs/results"), help="where the tables, plot, samples go")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="training runs (checkpoints, generators; default: outputs/bench_quality for "
                             "docs/results, else <out>/runs); existing generators are reused")
    parser.add_argument("--seeds", default="1234",
                        help="comma-separated seeds; every row is trained and measured at each (default 1234)")
    parser.add_argument("--rows", default=None,
                        help="the rows to measure, by name, separated by ';' (default: every row); rows a seed has "
                             "measured before are read back")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="training-config override applied to every run (runs already in --workdir are reused "
                             "as they are, so give changed settings a new workdir or copy only the runs they keep)")
    args = parser.parse_args()
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: expected comma-separated integers")
    if not seeds or len(set(seeds)) != len(seeds):
        parser.error(f"--seeds {args.seeds!r}: expected distinct seeds")
    known = [name for name, *_ in ROWS]
    names = known if args.rows is None else [x.strip() for x in args.rows.split(";") if x.strip()]
    unknown = [x for x in names if x not in known]
    if unknown or not names:
        parser.error(f"--rows {args.rows!r}: unknown rows {unknown}; the rows are: {'; '.join(known)}")
    sizes = QUICK if args.quick else FULL
    work = args.workdir or (Path("outputs/bench_quality") if args.out == Path("docs/results") else args.out / "runs")
    start = time.perf_counter()
    per_seed = {seed: run_seed(seed, sizes, args.out / f"seed-{seed}", work / f"seed-{seed}", args.overrides,
                               args.quick, names) for seed in seeds}
    rows = aggregate(per_seed)
    write_summary(rows, per_seed, args.out, sizes, args.quick, time.perf_counter() - start)
    plot(rows, args.out / "quality_vs_latency.png", spread=len(seeds) > 1)


def aggregate(per_seed: dict[int, list[dict]]) -> list[dict]:
    """Per row: every metric's mean, standard deviation over the seeds (0 for one seed) and per-seed values."""
    seeds = list(per_seed)
    rows = []
    for i, first in enumerate(per_seed[seeds[0]]):
        row = {"row": first["row"], "nfe": first["nfe"], "seeds": seeds}
        for metric in METRICS:
            values = [per_seed[s][i][metric] for s in seeds]
            row[metric] = statistics.fmean(values)
            row[f"{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
            row[f"{metric}_per_seed"] = values
        rows.append(row)
    return rows


def write_summary(rows: list[dict], per_seed: dict[int, list[dict]], out: Path, sizes: dict, quick: bool,
                  seconds: float) -> None:
    """The aggregated table (mean +- std over seeds, per-seed FD), the orderings with how many seeds they
    hold at, and the JSON beside it."""
    seeds = list(per_seed)
    n = len(seeds)
    fd = {s: {r["row"]: r["fd"] for r in per_seed[s]} for s in seeds}
    lines = ["# POSE at CPU scale: procedural moving shapes, tiny Wan I2V", "",
             f"Produced by `python tools/bench_quality.py{' --quick' if quick else ''} --seeds "
             f"{','.join(map(str, seeds))}` in {seconds / 60:.1f} minutes; {describe(sizes)} Mean +- standard "
             f"deviation over the {n} seeds (each seed trains its own teacher and every run from scratch); "
             "per-seed tables: `seed-<S>/quality.md`.", "",
             "| row | NFE | FD | FD per seed | one shape | colour | direction | jitter | first-frame MSE | "
             "latency (ms) |", "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        cells = [f"{r[m]:.{d}f} +- {r[m + '_std']:.{d}f}" for m, d in
                 (("one_shape", 2), ("colour", 2), ("direction", 2), ("motion_jitter", 3), ("first_frame_mse", 4),
                  ("latency_ms", 2))]
        per = " / ".join(f"{v:.1f}" for v in r["fd_per_seed"])
        lines.append(f"| {r['row']} | {r['nfe']} | {r['fd']:.2f} +- {r['fd_std']:.2f} | {per} | " + " | ".join(cells)
                     + " |")
    lines += ["", f"The orderings, by FD, with the number of seeds (of {n}) at which each holds:", ""]
    claims = []
    for statement, better, worse in CLAIMS:
        if better not in fd[seeds[0]] or worse not in fd[seeds[0]]:
            continue  # a row not measured this time (--rows)
        held = [s for s in seeds if fd[s][better] < fd[s][worse]]
        claims.append({"claim": statement, "better": better, "worse": worse, "holds_at": held})
        lines.append(f"- {statement}: {len(held)} of {n}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.md").write_text("\n".join(lines) + "\n")
    (out / "quality.json").write_text(json.dumps({"seeds": seeds, "seconds": seconds, "rows": rows,
                                                  "claims": claims}, indent=2))
    print(f"total time {seconds / 60:.1f} minutes for {n} seed(s)", flush=True)


def describe(sizes: dict) -> str:
    return (f"{sizes['eval_size']} evaluation videos of {sizes['frames']} x {sizes['size']} x {sizes['size']}; "
            f"teacher {sizes['teacher']} steps, Phase I {sizes['phase1']}, Phase II {sizes['phase2']}; teacher "
            f"guidance {sizes['guidance']} (standard CFG form). FD: Frechet distance to held-out real videos in "
            "a fixed random 3-D conv feature space (lower is better). one shape / colour / direction: fraction "
            "of videos right. jitter: spread of the frame-to-frame motion (pixels). first-frame MSE: against "
            "the I2V condition. Latency: sampling time per video on this machine.")


def write_table(rows: list[dict], out: Path, sizes: dict, seed: int, quick: bool) -> None:
    """One seed's table and JSON."""
    lines = ["# POSE at CPU scale: procedural moving shapes, tiny Wan I2V", "",
             f"Produced by `python tools/bench_quality.py{' --quick' if quick else ''} --seeds {seed}`; "
             f"{describe(sizes)}", "",
             "| row | NFE | FD | one shape | colour | direction | jitter | first-frame MSE | latency (ms) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['nfe']} | {r['fd']:.3f} | {r['one_shape']:.2f} | {r['colour']:.2f} | "
                     f"{r['direction']:.2f} | {r['motion_jitter']:.3f} | {r['first_frame_mse']:.4f} | "
                     f"{r['latency_ms']:.2f} |")
    out.mkdir(parents=True, exist_ok=True)
    (out / "quality.md").write_text("\n".join(lines) + "\n")
    (out / "quality.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
