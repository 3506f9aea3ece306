"""Optimisers with warm-up, and the one optimiser step every phase takes: reduce gradients over the
tensor- and data-parallel ranks, refuse non-finite steps, clip, step."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from torch import nn

from pose_mcore.config.train import OptimConfig
from pose_mcore.parallel.sequence import finalize_tensor_parallel_grads


class Optimizer:
    """Adam over ``params`` with a linear warm-up, for the modules in ``modules`` (whose gradients it
    finalises over tensor parallelism and averages over data parallelism)."""

    def __init__(self, params: Sequence[nn.Parameter], modules: Sequence[nn.Module], cfg: OptimConfig) -> None:
        self.params = [p for p in params if p.requires_grad]
        if not self.params:
            raise ValueError("an optimiser needs trainable parameters")
        self.modules = list(modules)
        self.cfg = cfg
        self.adam = torch.optim.Adam(self.params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                     weight_decay=cfg.weight_decay)
        warmup = max(cfg.warmup_steps, 0)
        self.schedule = torch.optim.lr_scheduler.LambdaLR(
            self.adam, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self, loss: torch.Tensor) -> tuple[bool, float]:
        """Backward ``loss`` and step unless the loss or the gradients are not finite; returns
        (stepped, gradient norm before clipping)."""
        self.zero_grad()
        loss.backward()
        for m in self.modules:
            finalize_tensor_parallel_grads(m)
        dp = parallel_state.get_data_parallel_world_size()
        if dp > 1:
            for p in self.params:
                if p.grad is not None:
                    dist.all_reduce(p.grad, group=parallel_state.get_data_parallel_group())
                    p.grad /= dp
        norm = self.grad_norm()
        if not (torch.isfinite(loss) and torch.isfinite(norm)):
            self.zero_grad()
            return False, float(norm)
        if self.cfg.clip_grad > 0:
            torch.nn.utils.clip_grads_with_norm_(self.params, self.cfg.clip_grad, norm)
        self.adam.step()
        self.schedule.step()
        self.zero_grad()
        return True, float(norm)

    def grad_norm(self) -> torch.Tensor:
        """The global L2 norm of the gradients: slices of tensor-parallel parameters summed over the TP
        ranks, replicated parameters counted once (as megatron-core's gradient clipping does)."""
        device = self.params[0].device  # on the GPU: no host sync per parameter, and NCCL reduces it
        sharded = torch.zeros((), dtype=torch.float64, device=device)
        replicated = torch.zeros((), dtype=torch.float64, device=device)
        for p in self.params:
            if p.grad is None:
                continue
            sq = p.grad.detach().double().pow(2).sum()
            if getattr(p, "tensor_model_parallel", False):
                sharded += sq
            else:
                replicated += sq
        if parallel_state.get_tensor_model_parallel_world_size() > 1:
            dist.all_reduce(sharded, group=parallel_state.get_tensor_model_parallel_group())
        return (sharded + replicated).sqrt().float()

    def state_dict(self) -> dict:
        return {"adam": self.adam.state_dict(), "schedule": self.schedule.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.adam.load_state_dict(state["adam"])
        self.schedule.load_state_dict(state["schedule"])
