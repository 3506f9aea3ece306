#!/usr/bin/env python
"""The DiT training step, pose_mcore against diffusers: same weights, same inputs, one process, TP=1.

For each size and family it measures the forward (no autograd) and the forward + backward of
diffusers' ``WanTransformer3DModel`` / ``HunyuanVideoTransformer3DModel`` / ``HunyuanVideo15Transformer3DModel``
and of pose_mcore's ``WanModel`` / ``HunyuanModel`` / ``HunyuanVideo15Model`` with the weights copied across,
and prints them side by side with the ratios (pose_mcore / diffusers: below 1 is faster or smaller). On CUDA both
run as they train: fp32 weights under bf16 autocast; on the CPU in fp32. The "saved" memory (the activations a
step keeps for backward, counted exactly with saved-tensor hooks) is the device-independent measure; on CUDA the
allocator's peak is printed too. The two models' runs are
interleaved, so that drift of a busy machine falls on both alike. Model TFLOP/s on CUDA counts the
matmuls and attention of the step.

    python tools/bench_model.py                  # the sizes for this machine (GPU sizes with CUDA)
    python tools/bench_model.py --quick          # tiny sizes: checks that everything runs
    python tools/bench_model.py --family wan --reps 5
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from pose_mcore.notices import quiet_third_party_warnings

quiet_third_party_warnings()  # before megatron-core is imported: it warns at import

from pose_mcore.checkpoint.configs import to_diffusers_config  # noqa: E402
from pose_mcore.checkpoint.layouts.hunyuan import hunyuan_to_diffusers  # noqa: E402
from pose_mcore.checkpoint.layouts.hunyuan15 import hunyuan15_to_diffusers  # noqa: E402
from pose_mcore.checkpoint.layouts.wan import wan_to_diffusers  # noqa: E402
from pose_mcore.evaluation.timing import PeakMemory, saved_activation_bytes, timed_side_by_side  # noqa: E402
from pose_mcore.models.registry import family_of_preset  # noqa: E402
from pose_mcore.parallel.sharding import full_state_dict  # noqa: E402
from pose_mcore.parallel.state import initialize_parallel, run_device  # noqa: E402

TO_DIFFUSERS: dict[str, Callable[[dict, Any], dict]] = {
    "wan": lambda state, cfg: wan_to_diffusers(state), "hunyuan": hunyuan_to_diffusers,
    "hunyuan15": lambda state, cfg: hunyuan15_to_diffusers(state)}
"""Each family's pose_mcore state dict under diffusers' names."""


@dataclass(frozen=True)
class Size:
    """One benchmark case: a preset with overrides, the latent video and the text length."""

    label: str
    preset: str
    overrides: dict[str, Any]
    latents: tuple[int, int, int, int]  # frames, height, width (latent), batch
    text_len: int
    extra: dict[str, Any] = field(default_factory=dict)


def _cpu_sizes() -> list[Size]:
    wan = dict(num_layers=4, hidden_size=512, num_attention_heads=4, ffn_hidden_size=2048)
    hunyuan = dict(num_layers=2, num_single_layers=4, num_refiner_layers=1, hidden_size=512, num_attention_heads=4,
                   ffn_hidden_size=2048, rope_axes_dim=(16, 56, 56))
    hunyuan15 = dict(num_layers=4, num_refiner_layers=1, hidden_size=512, num_attention_heads=4,
                     ffn_hidden_size=2048, rope_axes_dim=(16, 56, 56))
    return [Size("wan d512 L4, 2304 tok", "wan2.1-t2v-1.3b", wan, (4, 48, 48, 1), 512),
            Size("wan d512 L4, 576 tok", "wan2.1-t2v-1.3b", wan, (4, 24, 24, 1), 512),
            Size("hunyuan d512 2+4, 2304 tok", "hunyuan-t2v-13b", hunyuan, (4, 48, 48, 1), 256),
            Size("hunyuan1.5 d512 L4, 2304 tok", "hunyuan1.5-i2v-480p", hunyuan15, (4, 24, 24, 1), 256)]


def _gpu_sizes() -> list[Size]:
    wan = dict(num_layers=10)
    hunyuan = dict(num_layers=2, num_single_layers=4)
    return [Size("wan2.1-1.3b x10 blocks, 480p x 81f", "wan2.1-t2v-1.3b", wan, (21, 60, 104, 1), 512),
            Size("wan2.1-14b x2 blocks, 480p x 81f", "wan2.1-t2v-14b", dict(num_layers=2), (21, 60, 104, 1), 512),
            Size("hunyuan 2+4 blocks, 480p x 81f", "hunyuan-t2v-13b", hunyuan, (21, 60, 104, 1), 256),
            Size("hunyuan1.5 x4 blocks, 480p x 121f", "hunyuan1.5-i2v-480p", dict(num_layers=4), (31, 30, 53, 1),
                 1000)]


def _quick_sizes() -> list[Size]:
    return [Size("wan tiny", "tiny-t2v", {}, (3, 8, 8, 2), 7),
            Size("hunyuan tiny", "tiny-hunyuan-t2v", {}, (3, 8, 8, 2), 7),
            Size("hunyuan1.5 tiny", "tiny-hunyuan1.5-i2v", {}, (3, 4, 4, 2), 7)]


def build_pair(size: Size, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module, dict, dict]:
    """(pose_mcore model, diffusers model with the same weights, our inputs, diffusers' inputs)."""
    import diffusers

    family = family_of_preset(size.preset)
    cfg = family.make_config(size.preset, **size.overrides)
    torch.manual_seed(0)
    ours = family.model_class(cfg).to(device)
    dcfg = to_diffusers_config(cfg)
    reference = getattr(diffusers, dcfg.pop("_class_name")).from_config(dcfg).to(device)
    state = full_state_dict(ours)
    mapped = TO_DIFFUSERS[family.name](state, cfg)
    reference.load_state_dict(mapped)
    f, h, w, b = size.latents
    gen = torch.Generator().manual_seed(1)
    kwargs = {k: v.to(device) for k, v in family.random_conditions(cfg, b, size.text_len, gen).items()}
    inputs = {"hidden_states": torch.randn(b, cfg.in_channels, f, h, w, generator=gen).to(device),
              "timestep": torch.full((b,), 500.0, device=device), **kwargs}
    return ours, reference, inputs, dict(inputs)


def step_flops(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> float:
    """Model FLOPs of one forward + backward (3x the forward's matmuls and attention), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        model(**inputs).sample.float().square().mean().backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


@dataclass
class Result:
    fwd_ms: float
    step_ms: float
    peak_mb: float
    """The allocator's peak during a step (CUDA; nan on the CPU, where the resident set is too coarse)."""
    saved_mb: float
    """Activations kept for backward (exact, any device)."""


def calls(model: torch.nn.Module, inputs: dict[str, torch.Tensor], amp: bool
          ) -> tuple[Callable[[], None], Callable[[], None]]:
    """(forward without autograd, forward + backward) of one model."""
    device = inputs["hidden_states"].device.type
    leaf = inputs["hidden_states"].clone().requires_grad_()

    def fwd() -> None:
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            model(**inputs)

    def step() -> None:
        with torch.autocast(device, dtype=torch.bfloat16, enabled=amp):
            out = model(**{**inputs, "hidden_states": leaf}).sample
        out.float().square().mean().backward()
        model.zero_grad(set_to_none=True)
        leaf.grad = None

    return fwd, step


def measure(models: dict[str, tuple[torch.nn.Module, dict]], cuda: bool, reps: int) -> dict[str, Result]:
    """Times of both models, their runs interleaved; peak and saved memory of a step of each."""
    fns = {name: calls(m, i, amp=cuda) for name, (m, i) in models.items()}
    peaks, saved = {}, {}
    for name, (_, step) in fns.items():
        step()  # warm-up, outside the memory measurement (allocator caches, autotuning)
        with PeakMemory(cuda) as mem:
            step()
        peaks[name] = mem.peak_mb if cuda else math.nan
        model, inputs = models[name]
        leaf = {**inputs, "hidden_states": inputs["hidden_states"].clone().requires_grad_()}
        saved[name] = saved_activation_bytes(model, leaf, torch.bfloat16 if cuda else None) / 2**20
    fwd_ms = timed_side_by_side({n: f[0] for n, f in fns.items()}, cuda, reps)
    step_ms = timed_side_by_side({n: f[1] for n, f in fns.items()}, cuda, reps)
    return {n: Result(fwd_ms[n], step_ms[n], peaks[n], saved[n]) for n in models}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check that the script runs")
    parser.add_argument("--family", choices=[*TO_DIFFUSERS, "all"], default="all")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per measurement")
    args = parser.parse_args()

    initialize_parallel(1)
    device = run_device()
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
    reps = args.reps or (5 if cuda else 3)
    sizes = _quick_sizes() if args.quick else _gpu_sizes() if cuda else _cpu_sizes()
    sizes = [s for s in sizes if args.family in ("all", family_of_preset(s.preset).name)]
    name = (torch.cuda.get_device_name(device) if cuda
            else f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)")
    print(f"device: {name}; {'fp32 weights, bf16 autocast' if cuda else 'fp32'}; reps: {reps}; TP=1")
    header = (f"{'case':<36} {'model':<10} {'fwd ms':>9} {'fwd+bwd ms':>11} {'peak MiB':>9} {'saved MiB':>9} "
              f"{'TFLOP/s':>8}  ratio pose/diffusers (fwd, step, peak, saved)")
    print(header)
    print("-" * len(header), flush=True)
    failed = 0
    for size in sizes:
        try:
            ours, reference, inputs, ref_inputs = build_pair(size, device)
            flops = step_flops(ours, inputs) if cuda else math.nan
            results = measure({"diffusers": (reference, ref_inputs), "pose_mcore": (ours, inputs)}, cuda, reps)
        except Exception as e:  # noqa: BLE001 - reported in the case's row; the other sizes still run
            print(f"{size.label:<36} FAILED: {type(e).__name__}: {str(e)[:200]}", flush=True)
            failed += 1
            continue
        finally:
            ours = reference = None
            if cuda:
                torch.cuda.empty_cache()
        for label, r in results.items():
            tflops = f"{flops / (r.step_ms / 1e3) / 1e12:8.1f}" if cuda else f"{'-':>8}"
            ratio = ""
            if label == "pose_mcore":
                d = results["diffusers"]
                peak = f"{r.peak_mb / d.peak_mb:.2f}x" if cuda else "-"
                ratio = (f"  {r.fwd_ms / d.fwd_ms:.2f}x, {r.step_ms / d.step_ms:.2f}x, {peak}, "
                         f"{r.saved_mb / d.saved_mb:.2f}x")
            print(f"{size.label:<36} {label:<10} {r.fwd_ms:9.1f} {r.step_ms:11.1f} {r.peak_mb:9.0f} {r.saved_mb:9.1f} "
                  f"{tflops}{ratio}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
