"""Low-rank adapters on megatron-core's parallel linears, for the fake score (a LoRA on the frozen teacher).

Why not peft here: peft 0.21's megatron path (``LoraConfig(megatron_config=...)``) does not run
(``dispatch_megatron`` reads a ``fan_in_fan_out`` keyword that ``LoraModel`` no longer passes, and
``LoraParallelLinear`` never sets ``lora_bias``; huggingface/peft#2621). This module follows its
design: for a column-parallel base, ``A`` is replicated and ``B`` column-parallel; for a
row-parallel base, ``A`` is row-parallel and ``B`` replicated; ``B`` starts at zero, so an adapted
model equals its base until the adapter trains. Sequence parallelism follows the base layer.

The adapter can be switched off (:func:`lora_enabled`), which is how the real score (the teacher)
and the fake score (teacher + LoRA) share one frozen base copy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from torch import nn

from pose_mcore.models.registry import cast_weights
from pose_mcore.parallel.sequence import mark_sequence_parallel
from pose_mcore.parallel.sharding import grouped_init

DEFAULT_TARGETS = ("linear_q", "linear_k", "linear_v", "linear_proj", "linear_fc1", "linear_fc2")


class LoRAParallelLinear(nn.Module):
    """``base(x) + scale * B(A(x))`` around a megatron-core parallel linear (returns ``(out, bias)`` like it)."""

    def __init__(self, base: nn.Module, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.enabled = True
        self.scale = alpha / rank
        cfg = base.config
        mode, input_size, output_size = parallel_linear_shape(base)
        # A fused base (HunyuanVideo's [q | k | v | mlp]) is split group by group over the TP ranks: its
        # parallel half of the adapter must be cut (and drawn, see grouped_init) the same way, or each rank
        # would pair its q, k, v and MLP slices with the wrong rows of B (columns of A).
        groups = getattr(base.weight, "partition_groups", None)
        if mode == "row":
            init = nn.init.xavier_normal_ if groups is None else grouped_init(nn.init.xavier_normal_, groups, 1)
            self.lora_A = RowParallelLinear(input_size, rank, config=cfg, init_method=init,
                                            bias=False, input_is_parallel=True, skip_bias_add=True)
            self.lora_B = nn.Linear(rank, output_size, bias=False)
            # B sees this rank's token shard under sequence parallelism
            mark_sequence_parallel(self.lora_B, cfg.sequence_parallel)
        else:
            self.lora_A = nn.Linear(input_size, rank, bias=False)
            nn.init.xavier_normal_(self.lora_A.weight)
            mark_sequence_parallel(self.lora_A, cfg.sequence_parallel)
            self.lora_B = ColumnParallelLinear(rank, output_size, config=cfg, init_method=nn.init.zeros_,
                                               bias=False, gather_output=False)
        with torch.no_grad():
            self.lora_B.weight.zero_()
        if groups is not None:
            (self.lora_A if mode == "row" else self.lora_B).weight.partition_groups = groups
        # megatron-core builds its half of the adapter where its config says and torch's nn.Linear on the
        # CPU: both follow the base layer, wherever the model was moved.
        for half in (self.lora_A, self.lora_B):
            if half.weight.device != base.weight.device:
                half.to(device=base.weight.device)
            cast_weights(half, base.weight.dtype)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, bias = self.base(x)
        if not self.enabled:
            return out, bias
        a = self.lora_A(x)
        a = a[0] if isinstance(a, tuple) else a
        b = self.lora_B(a)
        b = b[0] if isinstance(b, tuple) else b
        return out + self.scale * b, bias


def parallel_linear_shape(layer: nn.Module) -> tuple[str, int, int]:
    """``(mode, input size, output size)`` of a megatron-core or transformer-engine parallel linear, mode
    'column' or 'row', sizes of the whole (unsplit) layer; TypeError for anything else."""
    if isinstance(layer, ColumnParallelLinear):
        return "column", layer.input_size, layer.output_size
    if isinstance(layer, RowParallelLinear):
        return "row", layer.input_size, layer.output_size
    mode = getattr(layer, "parallel_mode", None)  # megatron-core's TEColumn/TERowParallelLinear
    if mode in ("column", "row") and hasattr(layer, "config"):
        out_local, in_local = layer.weight.shape  # this rank's slice: [out / tp, in] or [out, in / tp]
        tp = layer.config.tensor_model_parallel_size
        return (mode, in_local, out_local * tp) if mode == "column" else (mode, in_local * tp, out_local)
    raise TypeError(f"LoRA needs a megatron-core (or transformer-engine) column- or row-parallel linear, "
                    f"got {type(layer).__name__}")


def _is_parallel_linear(layer: nn.Module) -> bool:
    try:
        parallel_linear_shape(layer)
    except TypeError:
        return False
    return True


def add_lora(model: nn.Module, rank: int = 16, alpha: float = 16.0, targets: Sequence[str] = DEFAULT_TARGETS
             ) -> list[nn.Parameter]:
    """Wrap every parallel linear whose attribute name is in ``targets`` with a zero-initialised LoRA;
    freeze everything else. Returns the LoRA parameters (the only trainable ones)."""
    wrapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if name in targets and _is_parallel_linear(child):
                setattr(module, name, LoRAParallelLinear(child, rank, alpha))
                wrapped += 1
    if wrapped == 0:
        raise ValueError(f"no megatron-core parallel linear named any of {list(targets)} in {type(model).__name__}")
    params = [p for n, p in model.named_parameters() if ".lora_" in n]
    for n, p in model.named_parameters():
        p.requires_grad_(".lora_" in n)
    return params


@contextlib.contextmanager
def lora_enabled(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Run the body with every LoRA adapter of ``model`` on or off (the base is shared either way)."""
    layers = [m for m in model.modules() if isinstance(m, LoRAParallelLinear)]
    before = [m.enabled for m in layers]
    for m in layers:
        m.enabled = enabled
    try:
        yield
    finally:
        for m, state in zip(layers, before, strict=True):
            m.enabled = state
