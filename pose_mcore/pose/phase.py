"""What every training phase shares: the step interface the trainer calls, the optimisers of its roles,
per-sample random draws, and the model calls in flow-matching terms."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from pose_mcore.checkpoint.sharded import Piece, ShardedReader
from pose_mcore.config.train import OptimConfig
from pose_mcore.engine.optimizer import Engine, Optimizer
from pose_mcore.parallel.replicas import Replica, parameter_replicas
from pose_mcore.pose.conditioning import Conditioner, Conditions
from pose_mcore.pose.draws import SampleDraws
from pose_mcore.pose.roles import Roles, train_generator

MicroBatches = Sequence[dict[str, torch.Tensor]]
"""This rank's share of one global batch, as micro-batches (each with its ``sample_index``)."""


class Phase:
    """One training phase: ``step(micro_batches)`` does one update of its roles from one global batch and
    returns its metrics.

    Random draws come from :class:`SampleDraws` keyed by the phase's seed, its step count (checkpointed)
    and each sample's place in the global batch, so a resumed run, and any TP x DP x accumulation layout
    of the same global batch, draws the same numbers.
    """

    name = "phase"

    def __init__(self, roles: Roles, conditioner: Conditioner, seed: int, device: torch.device,
                 engine: Engine | None = None) -> None:
        self.roles, self.conditioner, self.device = roles, conditioner, device
        self.seed = seed
        self.engine = engine or Engine()
        self.steps_done = 0
        self.skipped = 0
        self.bf16 = False
        """Run forward passes under bf16 autocast (set by :func:`pose_mcore.pose.build.build_phase`)."""

    def step(self, micro_batches: MicroBatches) -> dict[str, float]:
        metrics = self.update(micro_batches)
        self.steps_done += 1
        self.skipped += not metrics["stepped"]
        return metrics

    def update(self, micro_batches: MicroBatches) -> dict[str, float]:
        raise NotImplementedError

    def optimizer(self, modules: Sequence[nn.Module], cfg: OptimConfig) -> Optimizer:
        """An optimiser over the trained parameters of ``modules``, with the run's engine settings."""
        return Optimizer(modules, self.roles.generator.config, cfg, self.engine)

    def generator_optimizer(self, which: str, cfg: OptimConfig) -> Optimizer:
        """The generator's optimiser over ``which`` of its parameters (:func:`train_generator`)."""
        train_generator(self.roles.generator, which)
        return self.optimizer([self.roles.generator], cfg)

    def optimizers(self) -> dict[str, Optimizer]:
        return {}

    def replicas(self) -> Iterator[Replica]:
        """Every role's weights and every optimiser's reduced gradients as this rank holds them: after a step,
        each copy held by several ranks must be bitwise the same (:mod:`pose_mcore.parallel.replicas`)."""
        weights = (parameter_replicas(name, role) for name, role in self.roles.named_roles().items())
        grads = (opt.gradient_replicas(f"optimizer/{name}") for name, opt in self.optimizers().items())
        return itertools.chain(*weights, *grads)

    def draws(self, batch: dict[str, torch.Tensor], tag: str) -> SampleDraws:
        """The random draws of sub-step ``tag`` of this step for ``batch``'s samples."""
        return SampleDraws(self.seed, self.steps_done, tag, batch["sample_index"], self.device)

    def amp(self) -> torch.autocast:
        """Autocast for forward passes: bf16 when enabled (losses are computed in fp32)."""
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def velocity(self, model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, conds: Conditions,
                 kwargs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's velocity at ``x_t`` (I2V condition channels appended), in fp32."""
        with self.amp():
            return model(conds.inputs(x_t), conds.timestep(t, x_t), **kwargs).sample.float()

    def generate(self, conds: Conditions, x_T: torch.Tensor) -> torch.Tensor:
        """The generator's one-step sample ``x0 = x_T - G(x_T, 1, c)`` from the noise ``x_T`` (as
        :meth:`Conditions.start` makes it the generator's input)."""
        x_T = conds.start(x_T)
        t = torch.ones(x_T.shape[0], device=x_T.device)
        return conds.output(x_T - self.velocity(self.roles.generator, x_T, t, conds, conds.cond))

    def state_dict(self) -> dict[str, Any]:
        """The phase's counters (JSON): steps taken and skipped, each optimiser's steps. The optimisers'
        tensors are :meth:`pieces`."""
        return {"steps_done": self.steps_done, "skipped": self.skipped,
                "optimizer_steps": {k: v.steps for k, v in self.optimizers().items()}}

    def pieces(self) -> list[Piece]:
        """This rank's part of the optimisers' states, for a sharded checkpoint."""
        return [p for k, v in self.optimizers().items() for p in v.pieces(f"optimizer/{k}")]

    def load_state_dict(self, state: dict[str, Any], reader: ShardedReader) -> None:
        """Restore the counters and, from the sharded checkpoint ``reader`` reads, the optimisers' states."""
        self.steps_done = state["steps_done"]
        self.skipped = state["skipped"]
        for k, v in self.optimizers().items():
            v.load_pieces(reader, f"optimizer/{k}", state["optimizer_steps"][k])
