"""Run under torchrun with 2 ranks: each model at TP=2 (sequence parallelism off and on) against the
same weights at TP=1, saving both sides for tests/test_model_parallel.py to compare. ``compare`` also runs
the context-parallel layouts of tests/dist/model_cp.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from megatron.core import parallel_state

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hunyuan15_reference import VARIANTS as VARIANTS15  # noqa: E402
from hunyuan15_reference import hunyuan15_inputs  # noqa: E402
from hunyuan_reference import VARIANTS, hunyuan_inputs  # noqa: E402
from devices import seeded_randn, to_device  # noqa: E402
from wan_reference import wan_inputs  # noqa: E402

from pose_mcore.config.base import RECOMPUTE_EVERY_BLOCK  # noqa: E402
from pose_mcore.config.hunyuan import hunyuan_config  # noqa: E402
from pose_mcore.config.hunyuan15 import hunyuan15_config  # noqa: E402
from pose_mcore.config.wan import wan_config  # noqa: E402
from pose_mcore.models.hunyuan import HunyuanModel  # noqa: E402
from pose_mcore.models.hunyuan15 import HunyuanVideo15Model  # noqa: E402
from pose_mcore.models.wan import WanModel  # noqa: E402
from pose_mcore.parallel.sequence import finalize_tensor_parallel_grads  # noqa: E402
from pose_mcore.pose.lora import add_lora  # noqa: E402
from pose_mcore.parallel.sharding import full_state_dict, load_full_state_dict  # noqa: E402
from pose_mcore.parallel.state import destroy_parallel, initialize_parallel, run_device  # noqa: E402


def wan_case(preset, i2v, shape, per_token=False):
    return (lambda **kw: WanModel(wan_config(preset, **kw)).to(run_device()),
            lambda: to_device(wan_inputs(i2v, *shape, seed=3, per_token_timestep=per_token)))


def hunyuan_case(variant, shape, text_lengths):
    preset = VARIANTS[variant][1]
    return (lambda **kw: HunyuanModel(hunyuan_config(preset, **kw)).to(run_device()),
            lambda: to_device(hunyuan_inputs(variant, *shape, text_lengths, seed=3)))


def hunyuan15_case(variant, shape, text_lengths, glyph_lengths):
    preset = VARIANTS15[variant][1]
    return (lambda **kw: HunyuanVideo15Model(hunyuan15_config(preset, **kw)).to(run_device()),
            lambda: to_device(hunyuan15_inputs(variant, *shape, text_lengths, glyph_lengths, seed=3)))


def with_lora(case):
    """The case's model with a LoRA on every parallel linear (HunyuanVideo's fused ones included),
    everything trainable; at TP=1 the adapters get random B so they change the output."""
    build, make_inputs = case

    def build_lora(**kw):
        model = build(**kw)
        add_lora(model, rank=3, alpha=6.0)
        for n, p in model.named_parameters():
            p.requires_grad_(True)
            if n.endswith("lora_B.weight") and "tensor_model_parallel_size" not in kw:
                p.data.copy_(seeded_randn(p.shape, len(n)) * 0.1)
        return model

    return build_lora, make_inputs


SELECTIVE = dict(recompute_granularity="selective", recompute_modules=["core_attn", "mlp"])

# name -> ((model factory, inputs), activation checkpointing: True every block, "selective" attention and MLPs)
CASES = {
    "wan_t2v_odd_tokens": (wan_case("tiny-t2v", False, (2, 3, 2, 6)), False),  # 9 tokens
    "wan_i2v": (wan_case("tiny-i2v", True, (2, 2, 4, 6)), False),
    "wan_t2v_per_token_t_recompute": (wan_case("tiny-t2v", False, (1, 3, 6, 2), per_token=True), True),
    "hunyuan_t2v_odd_tokens": (hunyuan_case("t2v", (2, 3, 2, 6), [5, 2]), False),  # 9 tokens, masked text
    "hunyuan_i2v_concat": (hunyuan_case("i2v_concat", (2, 2, 4, 6), [4, 6]), False),
    "hunyuan_i2v_replace_recompute": (hunyuan_case("i2v_replace", (2, 3, 2, 6), [3, 4]), True),
    "hunyuan_i2v_replace_first_frame_split": (hunyuan_case("i2v_replace", (1, 1, 2, 10), [4]), False),  # 5 tokens
    "hunyuan15_t2v_odd_tokens": (hunyuan15_case("t2v", (2, 3, 1, 3), [5, 2], [3, 0]), False),  # 9 tokens
    "hunyuan15_i2v_recompute": (hunyuan15_case("i2v", (2, 2, 2, 3), [4, 6], [1, 2]), True),
    "hunyuan15_meanflow": (hunyuan15_case("meanflow", (1, 3, 2, 2), [3], [2]), False),
    "hunyuan15_i2v_selective_recompute": (hunyuan15_case("i2v", (2, 3, 1, 3), [4, 2], [2, 0]), "selective"),
    "wan_t2v_lora": (with_lora(wan_case("tiny-t2v", False, (1, 2, 4, 6))), False),
    "hunyuan_t2v_lora": (with_lora(hunyuan_case("t2v", (1, 3, 2, 6), [4])), False),  # fused single-stream linears
    "hunyuan15_i2v_lora": (with_lora(hunyuan15_case("i2v", (1, 3, 2, 3), [4], [2])), False),
}


def _share(t: torch.Tensor) -> torch.Tensor:
    """A gradient as DDP makes it: a CP rank's share averaged over the CP ranks (parallel/context.py)."""
    cp = parallel_state.get_context_parallel_world_size()
    if cp == 1:
        return t
    t = t.clone()
    dist.all_reduce(t, group=parallel_state.get_context_parallel_group())
    return t / cp


def run(model, inputs: dict[str, torch.Tensor], weight: torch.Tensor) -> dict[str, torch.Tensor]:
    inputs = {k: v.clone().requires_grad_(v.is_floating_point() and k not in ("timestep", "timestep_r", "guidance"))
              for k, v in inputs.items()}
    out = model(**inputs).sample
    (out * weight).sum().backward()
    finalize_tensor_parallel_grads(model)
    for p in model.parameters():
        if p.grad is not None:
            p.grad = _share(p.grad)
    result = {"out": out.detach()}
    result.update({f"input_grad.{k}": _share(v.grad) for k, v in inputs.items() if v.grad is not None})
    result.update({f"grad.{k}": v for k, v in full_state_dict(model, grads=True).items()})
    return result


def compare(cases: dict, layouts: dict[str, tuple[int, int, bool]], out: Path) -> None:
    """Each case at TP=1 CP=1 and at each layout (name -> (tp, cp, sequence parallel)) from the same weights;
    rank 0 saves ``{case: {"ref": ..., layout: ...}}``."""
    results = {}
    for name, ((build, make_inputs), recompute) in cases.items():
        extra = SELECTIVE if recompute == "selective" else RECOMPUTE_EVERY_BLOCK if recompute else {}
        initialize_parallel(1, seed=11)
        inputs = make_inputs()
        reference = build()
        weights = full_state_dict(reference)
        weight = seeded_randn(reference(**inputs).sample.shape, 5)
        results[name] = {"ref": run(reference, inputs, weight)}
        for layout, (tp, cp, sp) in layouts.items():
            initialize_parallel(tp, cp, seed=11)
            model = build(tensor_model_parallel_size=tp, context_parallel_size=cp, sequence_parallel=sp, **extra)
            built = full_state_dict(model)  # the same seed: the same whole weights (the test's LoRA B aside)
            results[name][f"{layout}.built_unlike_tp1"] = sorted(
                k for k, v in built.items() if "lora_B" not in k and not torch.equal(v, weights[k]))
            load_full_state_dict(model, weights)
            results[name][layout] = run(model, inputs, weight)
    if dist.get_rank() == 0:
        torch.save(results, out)
    destroy_parallel()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    compare(CASES, {"tp2_sp0": (2, 1, False), "tp2_sp1": (2, 1, True)}, parser.parse_args().out)


if __name__ == "__main__":
    main()
