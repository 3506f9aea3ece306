"""Activation memory of a training step: pose_mcore's Wan, HunyuanVideo and HunyuanVideo-1.5 DiTs keep no more for backward
than diffusers' implementations of the same weights, in fp32 and under bf16 autocast (how a GPU step runs).
Counted exactly, as the distinct tensors autograd saves (parameters excluded), so the claim is checked on
any machine; tools/bench_model.py measures the allocator's peak on a GPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from bench_model import Size, build_pair  # noqa: E402

from pose_mcore.evaluation.timing import saved_activation_bytes  # noqa: E402

SIZES = {
    "wan": Size("wan", "tiny-t2v", dict(hidden_size=128, num_attention_heads=4, ffn_hidden_size=512, text_dim=64),
                (4, 16, 16, 1), 16),
    "hunyuan": Size("hunyuan", "tiny-hunyuan-t2v", dict(hidden_size=128, num_attention_heads=4, ffn_hidden_size=512,
                                                        rope_axes_dim=(8, 12, 12)), (4, 16, 16, 1), 16),
    "hunyuan15": Size("hunyuan15", "tiny-hunyuan1.5-i2v", dict(hidden_size=128, num_attention_heads=4,
                                                               ffn_hidden_size=512, rope_axes_dim=(8, 12, 12)),
                      (4, 8, 8, 1), 16),
}
CONTEXT = {"hunyuan15": 256 + 729}
"""Context tokens beside the text: HunyuanVideo-1.5 I2V's glyph and SigLIP tokens (random_conditions')."""


@pytest.mark.parametrize("amp", [None, torch.bfloat16], ids=["fp32", "bf16_autocast"])
@pytest.mark.parametrize("family", list(SIZES))
def test_saves_no_more_than_diffusers(tp1, family, amp):
    size = SIZES[family]
    ours, reference, inputs, ref_inputs = build_pair(size, torch.device("cpu"))
    tokens = size.latents[0] * size.latents[1] * size.latents[2] // (1 if family == "hunyuan15" else 4)  # patches
    counts = (tokens, tokens + size.text_len + CONTEXT.get(family, 0))  # video tokens; the joint [video; text]
    leaf = {**inputs, "hidden_states": inputs["hidden_states"].clone().requires_grad_()}
    ref_leaf = {**ref_inputs, "hidden_states": ref_inputs["hidden_states"].clone().requires_grad_()}
    ours_bytes = saved_activation_bytes(ours, leaf, amp, counts)
    ref_bytes = saved_activation_bytes(reference, ref_leaf, amp, counts)
    assert ref_bytes > 0
    assert ours_bytes <= ref_bytes, f"{family} {amp}: pose_mcore saves {ours_bytes / 2**20:.2f} MiB, " \
                                    f"diffusers {ref_bytes / 2**20:.2f} MiB"
