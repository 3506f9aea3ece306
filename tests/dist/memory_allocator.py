"""Run in a fresh process (no process group yet): the memory model's prediction of each phase's step against the
CPU allocator's own count of a real chained run. The prediction: the tool's trace (fake tensors, a fake process
group) of each phase. The measurement: the trainer itself runs teacher -> Phase I -> Phase II in this process
under torch.profiler with ``profile_memory``: every allocation and free of the CPU allocator is an event with its
size and time, so their running sum is the bytes allocated at any moment; each phase's second step (its optimiser
states exist by then) is marked, and what was allocated at its start (the states) and the most allocated inside it
(the peak) are read off. ``--precision bf16`` runs the trainer's bf16 engine on the CPU (bf16 weights, fp32 main
weights, bf16 autocast with megatron's backward under autocast too), as the tool traces it."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from pose_mcore.config.train import PHASES, load_train_config
from pose_mcore.data.procedural import TEXT_TOKENS
from pose_mcore.evaluation.memory_model import fake_world, phase_step_memory
from pose_mcore.parallel.cpu_compat import cpu_autocast_backward
from pose_mcore.parallel.state import destroy_parallel
from pose_mcore.pose.phase import Phase
from pose_mcore.training import trainer as trainer_module
from pose_mcore.training.validate import validate_train_config

FRAMES, HEIGHT, WIDTH = 5, 16, 16
RUN = ["preset=tiny-t2v", "tensor_parallel=1", "micro_batch_size=4", "data.size=64", f"data.frames={FRAMES}",
       f"data.height={HEIGHT}", f"data.width={WIDTH}", "model.hidden_size=256", "model.num_attention_heads=4",
       "model.ffn_hidden_size=1024", "model.num_layers=2", "teacher.steps=3", "phase1.steps=3", "phase2.steps=3",
       "phase1.fake_updates=1", "phase1.lora_rank=8", "phase2.head_dim=32", "phase2.head_queries=4",
       "phase2.head_heads=2", "checkpoint_every=0", "log_every=100"]
MEASURED_STEP = 2
"""The step of each phase that is measured (the first allocates the optimiser states)."""


def predict(config) -> dict[str, dict[str, int]]:
    out = {}
    with fake_world(1):
        for phase in PHASES:
            m = phase_step_memory(config, phase, FRAMES, HEIGHT, WIDTH, text_len=TEXT_TOKENS, device_type="cuda")
            out[phase] = {"states": m.states, "step": m.step}
    return out


def measure(config) -> dict[str, dict[str, int]]:
    """The chained run under the profiler; per phase the allocator's bytes at the start of the measured step and
    the most inside it."""
    step = Phase.step

    def marked(self, micro_batches):  # on the class: a closure on each phase object would hold it in a cycle
        if self.steps_done + 1 != MEASURED_STEP:
            return step(self, micro_batches)
        with record_function(f"measured/{self.name}"):
            return step(self, micro_batches)

    Phase.step = marked
    if config.precision == "bf16":  # the CPU runs the GPU engine here, as the tool traces it
        trainer_module.validate_train_config = lambda c, w: validate_train_config(c, w, device_type="cuda")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        with cpu_autocast_backward(config.precision == "bf16"):
            trainer_module.Trainer(config).run()
    events = prof.profiler.kineto_results.events()
    memory = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]")
    ranges = {e.name().split("/")[1]: (e.start_ns(), e.end_ns()) for e in events if e.name().startswith("measured/")}
    out = {}
    for phase, (start, end) in ranges.items():
        allocated, states, peak = 0, None, 0
        for t, n in memory:
            if t >= start and states is None:
                states = allocated
            if t > end:
                break
            allocated += n
            if t >= start:
                peak = max(peak, allocated)
        out[phase] = {"states": states, "step": peak - states}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--precision", choices=("fp32", "bf16"), required=True)
    args = parser.parse_args()
    config = load_train_config(None, [*RUN, f"precision={args.precision}", f"output_dir={args.out.parent / 'run'}"])
    result = {"predicted": predict(config), "measured": measure(config)}
    destroy_parallel()
    torch.save(result, args.out)


if __name__ == "__main__":
    main()
