"""The one optimiser step every phase takes, the way megatron-core takes it: the loss of each
micro-batch backward into DDP's fp32 gradient buffers (reduction over the data-parallel ranks
overlapped with the last micro-batch's backward), the gradients of sequence-parallel replicated
parameters summed over the tensor-parallel ranks, a global gradient norm, a skipped step when
anything is not finite, clipping, Adam with a linear warm-up on the main parameters (sharded over the
data-parallel ranks with the distributed optimizer), and the parameter all-gather."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.transformer.transformer_config import TransformerConfig
from torch import nn

from pose_mcore.checkpoint.sharded import Piece, ShardedReader
from pose_mcore.config.train import OptimConfig
from pose_mcore.engine.ddp import data_parallel
from pose_mcore.engine.main_params import MainParam, main_params
from pose_mcore.parallel.replicas import Replica
from pose_mcore.parallel.sequence import finalize_tensor_parallel_grads

LossFn = Callable[[dict[str, torch.Tensor]], tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""A micro-batch -> (its mean loss, metrics to report as their mean over the global batch)."""


@contextlib.contextmanager
def without_grads(*modules: nn.Module) -> Iterator[None]:
    """Compute no gradients for the trained parameters of ``modules`` in the body (a frozen view of a role
    that another role's loss runs through)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@dataclass
class Engine:
    """How an optimiser trains (the run's ``distributed_optimizer`` and ``overlap_grad_reduce``)."""

    distributed_optimizer: bool = False
    overlap_grad_reduce: bool = True


@dataclass
class StepResult:
    stepped: bool
    grad_norm: float
    """The global gradient norm before clipping."""
    metrics: dict[str, float]
    """``loss`` and the loss function's metrics, averaged over the micro-batches and data-parallel ranks."""


class Optimizer:
    """Adam with a linear warm-up over the trained parameters of ``modules`` (each wrapped in megatron-core
    DDP built from the model ``config``); the distributed optimizer shards its states over the
    data-parallel ranks."""

    def __init__(self, modules: Sequence[nn.Module], config: TransformerConfig, cfg: OptimConfig,
                 engine: Engine | None = None) -> None:
        engine = engine or Engine()
        distributed = engine.distributed_optimizer
        self.modules = list(modules)
        self.ddps = [data_parallel(m, config, distributed, engine.overlap_grad_reduce) for m in self.modules]
        if not any(ddp.params_with_grad for ddp in self.ddps):
            raise ValueError("an optimiser needs trainable parameters")
        self.cfg, self.distributed = cfg, distributed
        self.params = main_params(self.ddps, distributed)
        mains = [p.main for p in self.params] or [torch.zeros(0)]  # a rank whose shards hold only padding
        self.adam = torch.optim.Adam(mains, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                     weight_decay=cfg.weight_decay, foreach=False)
        self.steps = 0
        """Steps taken (the warm-up position)."""

    def lr(self) -> float:
        """The learning rate of the next step: linear warm-up over ``warmup_steps`` steps."""
        warmup = max(self.cfg.warmup_steps, 0)
        return self.cfg.lr * (min(1.0, (self.steps + 1) / warmup) if warmup else 1.0)

    def step(self, loss_fn: LossFn, micro_batches: Sequence[dict[str, torch.Tensor]],
             frozen: Sequence[nn.Module] = ()) -> StepResult:
        """One update from the global batch whose share on this rank is ``micro_batches``: each micro-batch's
        loss, divided by their number, backward; skipped (nothing changes) if the loss or the gradients are
        not finite on any rank. ``frozen``: modules the loss runs through whose trained parameters get no
        gradients in this step (another optimiser's), during forward and backward alike (a recomputed
        forward must see what the first one saw)."""
        for ddp in self.ddps:
            ddp.zero_grad_buffer()
        n = len(micro_batches)
        sums: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(micro_batches):
            with contextlib.ExitStack() as stack:
                if i < n - 1:  # reduce once, overlapped with the last micro-batch's backward
                    for ddp in self.ddps:
                        stack.enter_context(ddp.no_sync())
                stack.enter_context(without_grads(*frozen))
                loss, metrics = loss_fn(batch)
                (loss / n).backward()
            for k, v in {"loss": loss, **metrics}.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float().reshape(())
        for ddp in self.ddps:
            if ddp.dp_cp_group.size() > 1:  # one data-parallel rank: nothing to reduce
                ddp.finish_grad_sync()
        for m in self.modules:
            finalize_tensor_parallel_grads(m)
        names = list(sums)
        stats = torch.stack([sums[k] for k in names]).double()  # on the device: NCCL reduces device tensors
        if parallel_state.get_data_parallel_world_size() > 1:
            dist.all_reduce(stats, group=parallel_state.get_data_parallel_group())
        stats /= n * parallel_state.get_data_parallel_world_size()
        metrics = dict(zip(names, stats.tolist(), strict=True))
        norm = self.grad_norm()
        if not (torch.isfinite(stats).all() and torch.isfinite(norm)):
            return StepResult(False, float(norm), metrics)
        if self.cfg.clip_grad > 0:
            torch.nn.utils.clip_grads_with_norm_([p.main for p in self.params], self.cfg.clip_grad, norm)
        for group in self.adam.param_groups:
            group["lr"] = self.lr()
        self.adam.step()
        self.steps += 1
        with torch.no_grad():
            for p in self.params:
                if p.main is not p.model:  # an fp32 copy: back into the model's bf16 weights
                    p.model.copy_(p.main)
        for ddp in self.ddps:
            if self.distributed and ddp.dp_cp_group.size() > 1:
                ddp.start_param_sync(force_sync=True)
        return StepResult(True, float(norm), metrics)

    def grad_norm(self) -> torch.Tensor:
        """The global L2 norm of the gradients: slices of tensor-parallel parameters summed over the TP
        ranks, replicated parameters counted once, shards of the distributed optimizer summed over the
        data-parallel ranks (as megatron-core's gradient clipping does). Equal on every rank."""
        # the buffers' device, also where this rank's shards hold only padding
        device = next(ddp.buffers[0].grad_data.device for ddp in self.ddps if ddp.buffers)
        sq = torch.zeros(2, dtype=torch.float64, device=device)  # [tensor-parallel slices, replicated]
        for p in self.params:  # fp32 norms per tensor (no full-size temporary), summed in fp64
            sq[0 if p.tensor_parallel else 1] += torch.linalg.vector_norm(p.grad, dtype=torch.float32).double().square()
        group = self.ddps[0].dp_cp_group
        if self.distributed and group.size() > 1:
            dist.all_reduce(sq, group=group)
        if parallel_state.get_tensor_model_parallel_world_size() > 1:
            dist.all_reduce(sq[0:1], group=parallel_state.get_tensor_model_parallel_group())
        return sq.sum().sqrt().float()

    def gradient_replicas(self, prefix: str) -> Iterator[Replica]:
        """The reduced gradients this rank holds (as the last step used them, clipped), for
        :func:`pose_mcore.parallel.replicas.check_replicas`: a TP slice is held alike by the data- and
        context-parallel ranks, a replicated gradient by every rank; with the distributed optimizer only by
        the TP ranks of the same shard."""
        tp_rank = parallel_state.get_tensor_model_parallel_rank()
        shard = self.ddps[0].dp_cp_group.rank() if self.distributed else None
        for p in self.params:
            copy = (tp_rank if p.tensor_parallel else None, shard, p.span)
            yield Replica(f"{prefix}/{p.name}.grad", copy, p.grad)

    def main_copies(self) -> list[torch.Tensor]:
        """The fp32 main weights that are copies (of non-fp32 model weights), not views of the model."""
        return [p.main for p in self.params if p.main is not p.model]

    def pieces(self, prefix: str) -> list[Piece]:
        """This rank's part of the optimiser state for a sharded checkpoint, keyed ``<prefix>/<name>/<state>``:
        Adam's two moments and, for non-fp32 weights, the fp32 main weights (a resumed run continues from
        them, not from their bf16 rounding). With the distributed optimizer each rank's pieces are its
        shards (flat ranges of the parameters); without it, whole TP slices held alike by every DP rank."""
        out = []
        for p in self.params:
            tensors = {k: v for k, v in self.adam.state.get(p.main, {}).items() if k in ("exp_avg", "exp_avg_sq")}
            if p.main is not p.model:
                tensors["main"] = p.main
            for state, t in tensors.items():
                key = f"{prefix}/{p.name}/{state}"
                out.append(Piece(key, t, p.param, p.span) if self.distributed
                           else Piece(key, t.view(p.param.shape), p.param))
        return out

    def load_pieces(self, reader: ShardedReader, prefix: str, steps: int) -> None:
        """Restore the state ``pieces`` saved, taken ``steps`` steps, in this rank's layout (any TP / DP size)."""
        self.steps = steps
        with torch.no_grad():
            for p in self.params:
                if p.main is not p.model:
                    p.main.copy_(_saved_part(reader, prefix, p, "main"))
                if steps:
                    self.adam.state[p.main] = {"step": torch.tensor(float(steps), dtype=torch.float32),
                                               "exp_avg": _saved_part(reader, prefix, p, "exp_avg"),
                                               "exp_avg_sq": _saved_part(reader, prefix, p, "exp_avg_sq")}


def _saved_part(reader: ShardedReader, prefix: str, p: MainParam, state: str) -> torch.Tensor:
    """This rank's part (``p.span`` of the flattened TP slice) of main parameter ``p``'s saved ``state``."""
    a, b = p.span
    return reader.local(f"{prefix}/{p.name}/{state}", p.param).reshape(-1)[a:b].to(p.main.device, copy=True)
