"""Wan2.2-A14B's two experts as one model: a high-noise and a low-noise DiT of the same architecture, switched
at a boundary timestep.

The rule is the official Wan2.2 code's (``wan/text2video.py``, ``_prepare_model_for_timestep``: ``if t.item() >=
boundary: high_noise_model``, ``boundary = config.boundary * num_train_timesteps``) and diffusers'
(``WanPipeline``: ``if boundary_timestep is None or t >= boundary_timestep: current_model = self.transformer``
with ``boundary_timestep = boundary_ratio * num_train_timesteps``): a timestep AT the boundary belongs to the
high-noise expert. Both compare the model's time input (``1000 t``); so does :meth:`Experts.is_high`.

Training draws a time per sample, so one batch may hold samples of both experts: :meth:`Experts.forward` runs
each expert on its own samples (all ranks of a tensor- or context-parallel group hold the same samples, so they
agree on the split) and puts the outputs back in batch order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch import nn
from torch._guards import detect_fake_mode

from pose_mcore.config.wan import WanConfig
from pose_mcore.diffusion.flow import model_timestep
from pose_mcore.models.output import TransformerOutput

EXPERTS = ("high", "low")
"""The experts' names, high-noise first: the submodule names (and a checkpoint's tensor-name prefixes)."""


class Experts(nn.Module):
    """A mixture of two Wan experts (``config.boundary`` set); each expert is ``build(config)`` with no boundary.
    Called like a Wan model; ``.config`` is the mixture's (with the boundary)."""

    sparse_gradients = True
    """A step may give one expert's trained parameters (a fake-score LoRA) no gradient: data parallelism must
    not wait for every parameter's gradient before reducing a bucket (:func:`pose_mcore.engine.ddp.data_parallel`)."""

    def __init__(self, config: WanConfig, build: Callable[[WanConfig], nn.Module]) -> None:
        super().__init__()
        if config.boundary is None:
            raise ValueError("Experts needs a config with a boundary (a two-expert model)")
        self.config = config
        single = dataclasses.replace(config, boundary=None)
        self.high = build(single)
        self.low = build(single)

    @property
    def boundary_timestep(self) -> float:
        """The boundary on the model's time input: ``boundary * 1000``."""
        return self.config.boundary * 1000

    def is_high(self, timestep: torch.Tensor) -> torch.Tensor:
        """Per sample ``[b]``: whether the model time ``timestep`` (``[b]``, or ``[b, tokens]``: its largest) is
        the high-noise expert's (at or above the boundary)."""
        per_sample = timestep.reshape(timestep.shape[0], -1).amax(1)
        return per_sample >= self.boundary_timestep

    def expert(self, t: float) -> nn.Module:
        """The expert of flow time ``t`` (``t = 1`` pure noise): high at or above the boundary."""
        return self.high if 1000 * t >= self.boundary_timestep else self.low

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, return_dict: bool = True,
                **kwargs: torch.Tensor | None) -> TransformerOutput | tuple[torch.Tensor]:
        """Each sample through the expert of its timestep."""
        b = hidden_states.shape[0]
        # A memory trace (fake tensors) has no values to split by: the whole batch takes one expert. Exact for one
        # sample per micro-batch (the shipped configs); a split batch holds the same activations in two parts plus
        # the outputs' concatenation.
        high = self.is_high(timestep)
        n_high = b if detect_fake_mode() is not None else int(high.sum())
        if n_high in (0, b):
            out = (self.high if n_high else self.low)(hidden_states, timestep, **kwargs).sample
            return TransformerOutput(out) if return_dict else (out,)

        def part(mask: torch.Tensor, model: nn.Module) -> torch.Tensor:
            def take(v: object) -> object:
                return v[mask] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == b else v

            return model(hidden_states[mask], timestep[mask], **{k: take(v) for k, v in kwargs.items()}).sample

        order = torch.cat([high.nonzero()[:, 0], (~high).nonzero()[:, 0]])
        out = torch.cat([part(high, self.high), part(~high, self.low)])[torch.argsort(order)]
        return TransformerOutput(out) if return_dict else (out,)


def guidance_of(model: nn.Module, high: float, low: float | None) -> float | Callable[[torch.Tensor], torch.Tensor]:
    """The CFG scale to sample or distil ``model`` with: ``high`` for one model; for two experts, per sample of
    flow time ``t [b]`` its expert's (``high`` for the high-noise one, ``low`` (default ``high``) below), as
    ``WanPipeline``'s ``guidance_scale`` / ``guidance_scale_2``."""
    if not isinstance(model, Experts) or low is None or low == high:
        return high
    return lambda t: torch.where(model.is_high(model_timestep(t)), high, low)
