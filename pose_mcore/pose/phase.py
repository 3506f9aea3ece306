"""What every training phase shares: the step interface the trainer calls, seeded noise, and the
model calls in flow-matching terms."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pose_mcore.diffusion.flow import model_timestep, sample_t
from pose_mcore.pose.conditioning import Conditioner, Conditions
from pose_mcore.pose.roles import Roles


class Phase:
    """One training phase: ``step(batch)`` does one update of its roles and returns its metrics.

    Randomness (timesteps, noise) comes from the phase's own generator, which is checkpointed, so a
    resumed run draws the same numbers as an uninterrupted one.
    """

    name = "phase"

    def __init__(self, roles: Roles, conditioner: Conditioner, seed: int, device: torch.device) -> None:
        self.roles, self.conditioner, self.device = roles, conditioner, device
        self.rng = torch.Generator().manual_seed(seed)
        self.skipped = 0
        self.bf16 = False
        """Run forward passes under bf16 autocast (set by the trainer from ``precision``)."""

    def step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError

    def optimizers(self) -> dict[str, Any]:
        return {}

    def noise(self, like: torch.Tensor) -> torch.Tensor:
        return torch.randn(like.shape, generator=self.rng).to(like)

    def times(self, batch: int, t_min: float, t_max: float, shift: float) -> torch.Tensor:
        return sample_t(batch, t_min, t_max, shift, self.rng, self.device)

    def amp(self) -> torch.autocast:
        """Autocast for forward passes: bf16 when enabled (losses are computed in fp32)."""
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def velocity(self, model: nn.Module, x_t: torch.Tensor, t: torch.Tensor, conds: Conditions,
                 kwargs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's velocity at ``x_t`` (I2V condition channels appended), in fp32."""
        with self.amp():
            return model(conds.inputs(x_t), model_timestep(t), **kwargs).sample.float()

    def generate(self, conds: Conditions, x_T: torch.Tensor) -> torch.Tensor:
        """The generator's one-step sample ``x0 = x_T - G(x_T, 1, c)``."""
        t = torch.ones(x_T.shape[0], device=x_T.device)
        return x_T - self.velocity(self.roles.generator, x_T, t, conds, conds.cond)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.get_state(), "skipped": self.skipped,
                "optimizers": {k: v.state_dict() for k, v in self.optimizers().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.set_state(state["rng"])
        self.skipped = state["skipped"]
        for k, v in self.optimizers().items():
            v.load_state_dict(state["optimizers"][k])
