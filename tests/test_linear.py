"""pose_mcore's parallel linears (pose_mcore/layers/linear.py): unsplit (TP=1) they run as one fused
``F.linear``; their outputs and gradients equal megatron-core's own path of the same layer, for every bias
mode, and under bf16 autocast the output keeps the activation dtype and bf16's accuracy. TP=2 against TP=1 is checked on the
whole models (tests/test_model_parallel.py)."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_close_rel
from devices import to_device

from pose_mcore.layers.linear import ColumnParallelLinear, RowParallelLinear
from pose_mcore.models.registry import family_of_preset
from pose_mcore.parallel.state import run_device

CASES = {
    "column": (ColumnParallelLinear, dict(gather_output=False, skip_bias_add=False)),
    "column-skip-bias": (ColumnParallelLinear, dict(gather_output=False, skip_bias_add=True)),
    "column-gather": (ColumnParallelLinear, dict(gather_output=True, skip_bias_add=False)),
    "row": (RowParallelLinear, dict(input_is_parallel=True, skip_bias_add=False)),
    "row-skip-bias": (RowParallelLinear, dict(input_is_parallel=True, skip_bias_add=True)),
}


def _run(layer: torch.nn.Module, x: torch.Tensor, amp: bool) -> tuple[torch.Tensor, ...]:
    x = x.clone().requires_grad_()
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
        out, bias = layer(x)
        if bias is not None:
            out = out + bias
    (out.float() * torch.linspace(-1, 1, out.shape[-1], device=out.device)).square().sum().backward()
    return out, x.grad, layer.weight.grad, layer.bias.grad


@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(CASES))
def test_unsplit_linear_equals_megatrons_path(tp1, case, amp):
    """Against megatron's path in fp32; ``bf16``: bf16 weights and inputs under bf16 autocast (how
    ``precision=bf16`` trains) against that fp32 result, to bf16's rounding."""
    cls, kwargs = CASES[case]
    cfg = family_of_preset("tiny-t2v").make_config("tiny-t2v")
    torch.manual_seed(0)
    layer = cls(24, 40, config=cfg, init_method=cfg.init_method, bias=True, is_expert=False, **kwargs).to(run_device())
    with torch.no_grad():
        layer.bias.normal_()
    assert layer.unsplit
    x = to_device(torch.randn(7, 3, 24, generator=torch.Generator().manual_seed(1)))
    layer.unsplit = False  # megatron's path of the same layer
    want = _run(layer, x, False)
    layer.zero_grad(set_to_none=True)
    layer.unsplit = True
    if amp:
        layer.to(torch.bfloat16)
    got = _run(layer, x.to(torch.bfloat16) if amp else x, amp)
    # the activation dtype; a returned bias is added by the caller, in the bias's dtype
    assert got[0].dtype == (torch.bfloat16 if amp else torch.float32)
    rel = 2e-2 if amp else 1e-6  # bf16: inputs and weights rounded to 8 bits (errors seen: 7e-3)
    for name, g, w in zip(("output", "d input", "d weight", "d bias"), got, want, strict=True):
        assert_close_rel(g.float(), w.float(), rel, name)


def test_cast_weights_keep_megatrons_path(tp1):
    """fp32 weights under bf16 autocast (``precision=amp``): F.linear would keep each weight's bf16 copy for
    backward; megatron's function keeps only the input (and the fp32 weight itself)."""
    cfg = family_of_preset("tiny-t2v").make_config("tiny-t2v")
    layer = ColumnParallelLinear(24, 40, config=cfg, init_method=cfg.init_method, bias=True, gather_output=False,
                                 skip_bias_add=False, is_expert=False).to(run_device())
    x = to_device(torch.randn(7, 3, 24)).to(torch.bfloat16).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t), \
            torch.autocast(run_device().type, dtype=torch.bfloat16):
        out, _ = layer(x)
    assert out.dtype == torch.bfloat16
    assert not [t for t in saved if t.numel() == layer.weight.numel() and t.dtype == torch.bfloat16]


def test_a_transposed_input_is_not_copied_for_backward(tp1):
    """A non-contiguous input keeps megatron's path, which saves the view itself (F.linear would save a
    contiguous copy: a block's worth of text context per cross-attention linear)."""
    cfg = family_of_preset("tiny-t2v").make_config("tiny-t2v")
    layer = ColumnParallelLinear(24, 40, config=cfg, init_method=cfg.init_method, bias=True, gather_output=False,
                                 skip_bias_add=False, is_expert=False).to(run_device())
    x = to_device(torch.randn(3, 7, 24)).requires_grad_()
    ours = {p.untyped_storage().data_ptr() for p in layer.parameters()} | {x.untyped_storage().data_ptr()}
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.untyped_storage().data_ptr()) or t,
                                                  lambda t: t):
        layer(x.transpose(0, 1))
    assert saved and set(saved) <= ours  # the input's own storage and the weight: no copy
