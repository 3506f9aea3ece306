"""Moving coloured shapes with known motion: a video dataset that needs no download.

Each sample is a latent-like video ``[C, F, H, W]``: one shape (square, disk or cross) of one colour
(a fixed vector over the C channels) on a zero background, moving in one of four directions at a
constant speed from a random start, plus its "text": condition tokens ``[L, text_dim]`` that embed
the shape, the colour and the direction with a fixed random table. The first frame is the I2V
condition. Everything is a function of the seed and the index, so the data are reproducible and
the attributes of every sample are known (the quality benchmark measures against them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

if TYPE_CHECKING:
    from pose_mcore.config.base import VideoDiTConfig

SHAPES = ("square", "disk", "cross")
DIRECTIONS = ((0, 1), (0, -1), (1, 0), (-1, 0))  # (dy, dx) per frame: right, left, down, up
TEXT_TOKENS = 3  # shape, colour, direction


@dataclass(frozen=True)
class ProceduralConfig:
    channels: int = 4
    frames: int = 5
    height: int = 16
    width: int = 16
    text_dim: int = 32
    num_colours: int = 4
    size: int = 5
    speed: int = 1
    amplitude: float = 2.0
    table_seed: int = 1234
    """Seed of the colour vectors and the text-embedding table (fixed for the dataset)."""

    @classmethod
    def for_model(cls, model: VideoDiTConfig, frames: int, height: int, width: int, **more: Any) -> ProceduralConfig:
        """Videos of ``frames x height x width`` in the latent channels and text width of a model of ``model``."""
        return cls(channels=model.out_channels, text_dim=model.text_dim, frames=frames, height=height, width=width,
                   **more)

    def problem(self) -> str | None:
        """Why these videos cannot be drawn (a shape must fit its frame all along its path), or None."""
        travel = self.speed * (self.frames - 1)
        if self.size + travel > min(self.height, self.width):
            return (f"a shape of size {self.size} moving {travel} pixels over {self.frames} frames does not fit a "
                    f"{self.height}x{self.width} frame (height and width must be at least {self.size + travel})")
        return None


class ProceduralVideos(Dataset):
    """``length`` reproducible samples: ``{"latents", "text", "first_frame", "shape", "colour", "direction",
    "start"}``."""

    def __init__(self, config: ProceduralConfig, length: int, seed: int = 0) -> None:
        self.config, self.length, self.seed = config, length, seed
        problem = config.problem()
        if problem:
            raise ValueError(problem)
        gen = torch.Generator().manual_seed(config.table_seed)
        colours = torch.randn(config.num_colours, config.channels, generator=gen)
        self.colours = config.amplitude * colours / colours.norm(dim=1, keepdim=True) * config.channels**0.5
        vocab = len(SHAPES) + config.num_colours + len(DIRECTIONS)
        self.table = torch.randn(vocab, config.text_dim, generator=gen)

    def __len__(self) -> int:
        return self.length

    def attributes(self, index: int) -> tuple[int, int, int, tuple[int, int]]:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} samples")
        c = self.config
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        shape = int(torch.randint(len(SHAPES), (1,), generator=gen))
        colour = int(torch.randint(c.num_colours, (1,), generator=gen))
        direction = int(torch.randint(len(DIRECTIONS), (1,), generator=gen))
        travel = c.speed * (c.frames - 1)
        dy, dx = DIRECTIONS[direction]
        y_lo, y_hi = (0, c.height - c.size) if dy == 0 else ((0, c.height - c.size - travel) if dy > 0
                                                             else (travel, c.height - c.size))
        x_lo, x_hi = (0, c.width - c.size) if dx == 0 else ((0, c.width - c.size - travel) if dx > 0
                                                            else (travel, c.width - c.size))
        y = int(torch.randint(y_lo, y_hi + 1, (1,), generator=gen))
        x = int(torch.randint(x_lo, x_hi + 1, (1,), generator=gen))
        return shape, colour, direction, (y, x)

    def mask(self, shape: int) -> torch.Tensor:
        s = self.config.size
        yy, xx = torch.meshgrid(torch.arange(s) - (s - 1) / 2, torch.arange(s) - (s - 1) / 2, indexing="ij")
        if SHAPES[shape] == "square":
            return torch.ones(s, s)
        if SHAPES[shape] == "disk":
            return (yy**2 + xx**2 <= (s / 2) ** 2).float()
        return ((yy.abs() < 0.6) | (xx.abs() < 0.6)).float()

    def text(self, shape: int, colour: int, direction: int) -> torch.Tensor:
        ids = torch.tensor([shape, len(SHAPES) + colour, len(SHAPES) + self.config.num_colours + direction])
        return self.table[ids]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        c = self.config
        shape, colour, direction, (y, x) = self.attributes(index)
        video = torch.zeros(c.channels, c.frames, c.height, c.width)
        m = self.mask(shape)
        dy, dx = DIRECTIONS[direction]
        for f in range(c.frames):
            yf, xf = y + dy * c.speed * f, x + dx * c.speed * f
            video[:, f, yf:yf + c.size, xf:xf + c.size] += self.colours[colour][:, None, None] * m
        return {"latents": video, "text": self.text(shape, colour, direction), "first_frame": video[:, :1].clone(),
                "shape": torch.tensor(shape), "colour": torch.tensor(colour), "direction": torch.tensor(direction),
                "start": torch.tensor([y, x])}
