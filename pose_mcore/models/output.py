"""Model outputs shaped like diffusers' ``Transformer2DModelOutput`` (``.sample`` or ``[0]``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class TransformerOutput:
    sample: torch.Tensor

    def __getitem__(self, index: int) -> torch.Tensor:
        return (self.sample,)[index]
