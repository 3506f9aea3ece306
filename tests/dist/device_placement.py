"""Run in a fresh process (no process group yet, CUDA hidden): every phase's step as the trainer builds and
runs it, its sample, and pose-sample's generation, on the emulated accelerator of tests/emulated_device.py,
for every family and conditioning, at TP=1 and on rank 0 of TP=2 (sequence parallel) and CP=2 layouts;
plus two runs that must fail, each with a tensor left on the CPU. Saves each case's outcome (``ok`` or the
error) for tests/test_device_placement.py."""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from emulated_device import emulated_accelerator  # noqa: E402

from pose_mcore.config.train import load_train_config  # noqa: E402
from pose_mcore.evaluation.memory_model import fake_world, train_batch  # noqa: E402
from pose_mcore.inference.sample import generate  # noqa: E402
from pose_mcore.models.registry import family_of_preset  # noqa: E402
from pose_mcore.pose.build import build_phase  # noqa: E402
from pose_mcore.pose.conditioning import Conditioner, negative_fields  # noqa: E402
from pose_mcore.pose.phase import Phase  # noqa: E402

SHAPE = (5, 4, 4)  # latent frames, height, width
PRESETS = ("tiny-t2v", "tiny-i2v", "tiny-ti2v-i2v", "tiny-hunyuan-t2v", "tiny-hunyuan-i2v",
           "tiny-hunyuan-i2v-token-replace")
PARALLEL_PRESETS = ("tiny-i2v", "tiny-hunyuan-i2v")
FULL_CONV = ["phase2.backbone=full", "phase2.head=conv"]  # the default run has the EMA backbone, semantic head
SMALL = {  # HunyuanVideo (True) or Wan: one block of each kind, one fake-score update per Phase I step
    False: ["micro_batch_size=2", "model.num_layers=1", "phase1.fake_updates=1", "phase2.feature_layers=[0]"],
    True: ["micro_batch_size=2", "model.num_layers=1", "model.num_single_layers=1", "phase1.fake_updates=1",
           "phase2.feature_layers=[0]"]}
LAYOUTS = {"tp1": (1, 1), "tp2": (2, 1), "cp2": (1, 2)}  # name -> (tensor parallel, context parallel)


def _steps(step: Phase, data: dict[str, torch.Tensor], conditioner: Conditioner, steps: int) -> None:
    """``steps`` steps of a phase and its one-step sample, as the trainer runs them."""
    for _ in range(steps):
        step.step([data])
    with torch.no_grad():
        step.generate(conditioner(data), torch.randn(data["latents"].shape).to(data["latents"]))


def phase_run(preset: str, tp: int, cp: int, phases: tuple[str, ...] = ("teacher", "phase1", "phase2"),
              overrides: tuple[str, ...] = (), spoil: Callable[[Phase], None] | None = None) -> None:
    """``phases`` in the trainer's order, each handing its roles on as the trainer does (the trained teacher to
    Phase I, Phase I's roles to Phase II); ``spoil`` breaks the last phase before its steps (the controls)."""
    family = family_of_preset(preset)
    run = load_train_config(None, [f"preset={preset}", *SMALL[preset.startswith("tiny-hunyuan")], *overrides])
    with emulated_accelerator() as device:
        cfg = family.make_config(preset, tensor_model_parallel_size=tp, context_parallel_size=cp,
                                 sequence_parallel=tp > 1, **run.model)
        teacher = family.build(cfg).to(device)  # as the trainer builds its teacher
        data = {k: v.to(device) for k, v in train_batch(cfg, 2, *SHAPE, text_len=7).items()}
        data["sample_index"] = torch.arange(2).to(device)
        conditioner = Conditioner(cfg, negative={k: data[k][0] for k in negative_fields(cfg)})
        roles = None
        for i, name in enumerate(phases):
            roles, step = build_phase(name, run, teacher, conditioner, device, roles)
            if spoil is not None and i == len(phases) - 1:
                spoil(step)
            # a second step where DDP overlaps its reduction (DP x CP > 1): it checks the first one's gradients
            _steps(step, data, conditioner, 2 if cp > 1 else 1)
            teacher = roles.generator if name == "teacher" else None


def sample_run(preset: str, tp: int, cp: int) -> None:
    """pose-sample's generation (:func:`generate`, 1 and 2 steps) from a conditioning batch on the CPU."""
    family = family_of_preset(preset)
    run = load_train_config(None, [f"preset={preset}", *SMALL[preset.startswith("tiny-hunyuan")]])
    with emulated_accelerator() as device:
        cfg = family.make_config(preset, tensor_model_parallel_size=tp, context_parallel_size=cp,
                                 sequence_parallel=tp > 1, **run.model)
        model = family.build(cfg).to(device).eval()
        data = train_batch(cfg, 1, *SHAPE, text_len=7)
        batch = {k: v for k, v in data.items() if k != "latents"}
        batch.update({f"negative_{k}": data[k][0] for k in negative_fields(cfg)})
        for steps in (1, 2):
            generate(model, batch, tuple(data["latents"].shape), seed=0, steps=steps)


def lora_left_on_cpu(step: Phase) -> None:
    """The first GPU run's crash: a LoRA adapter's torch half stays on the CPU while its base moved."""
    lora = next(m for m in step.roles.base.modules() if hasattr(m, "lora_A"))
    for p in lora.lora_A.parameters():
        p.fake_device = torch.device("cpu")


def cpu_timesteps(step: Phase) -> None:
    """A step that makes a tensor without naming the device: the generator's timesteps on the CPU."""
    original = step.velocity

    def velocity(model: torch.nn.Module, x_t: torch.Tensor, t: torch.Tensor, *args: object) -> torch.Tensor:
        return original(model, x_t, torch.ones(x_t.shape[0]), *args)

    step.velocity = velocity


def outcome(fn: Callable[[], None]) -> str:
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - the outcome is reported, the test judges it
        return f"{type(e).__name__}: {e}\n{''.join(traceback.format_tb(e.__traceback__)[-6:])}"
    return "ok"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", default="", help="run the cases whose names contain this")
    args = parser.parse_args()
    cases: dict[str, Callable[[], None]] = {}
    for layout, (tp, cp) in LAYOUTS.items():
        for preset in PRESETS if layout == "tp1" else PARALLEL_PRESETS:
            cases[f"{layout}/{preset}/phases"] = lambda tp=tp, cp=cp, preset=preset: phase_run(preset, tp, cp)
            cases[f"{layout}/{preset}/sample"] = lambda tp=tp, cp=cp, preset=preset: sample_run(preset, tp, cp)
            if preset in PARALLEL_PRESETS:
                cases[f"{layout}/{preset}/phase2-full-conv"] = (
                    lambda tp=tp, cp=cp, preset=preset: phase_run(preset, tp, cp, ("phase2",), FULL_CONV))
    for name, spoil in (("lora-left-on-cpu", lora_left_on_cpu), ("cpu-timesteps", cpu_timesteps)):
        cases[f"control/{name}"] = lambda spoil=spoil: phase_run("tiny-i2v", 1, 1, ("phase1",), spoil=spoil)
    results = {}
    for layout, (tp, cp) in LAYOUTS.items():
        with fake_world(tp, tp * cp, cp):
            for case, run in cases.items():
                if case.startswith((layout, "control") if layout == "tp1" else layout) and args.only in case:
                    results[case] = outcome(run)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
