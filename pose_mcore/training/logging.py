"""Run logging: a progress bar with the latest metrics (on a terminal; elsewhere, as under CI, nohup or
SLURM, one plain line every ``log_every`` steps), a JSONL file of every logged step, TensorBoard scalars
when asked, and sample videos as GIF grids."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm


class RunLogger:
    """Rank 0 logs; other ranks hold a silent instance."""

    def __init__(self, output: Path, enabled: bool, tensorboard: bool, interactive: bool | None = None) -> None:
        self.enabled = enabled
        self.output = output
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        """A live progress bar (tqdm draws on stderr); without a terminal, plain lines on stdout."""
        self.bar: tqdm | None = None
        self.total = 0
        self.writer = None
        if enabled:
            output.mkdir(parents=True, exist_ok=True)
            self.metrics = open(output / "metrics.jsonl", "a")  # noqa: SIM115 - closed in close()
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(output / "tensorboard"))

    def start_phase(self, name: str, total: int, done: int) -> None:
        self.total = total
        if self.enabled and self.interactive:
            self.bar = tqdm(total=total, initial=done, desc=name, dynamic_ncols=True)
        elif self.enabled:
            print(f"{name}: step {done} of {total}", flush=True)

    def log(self, phase: str, step: int, global_step: int, metrics: dict[str, float], rate: float,
            write: bool) -> None:
        if not self.enabled:
            return
        shown = {k: f"{v:.4g}" for k, v in metrics.items() if not k.startswith("stepped")} | {"it/s": f"{rate:.2f}"}
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(shown)
        elif write:
            print(f"{phase} {step}/{self.total} " + " ".join(f"{k}={v}" for k, v in shown.items()), flush=True)
        if write:
            self.metrics.write(json.dumps({"phase": phase, "step": step, "global_step": global_step, **metrics}) + "\n")
            self.metrics.flush()
            if self.writer is not None:
                for k, v in metrics.items():
                    self.writer.add_scalar(f"{phase}/{k}", v, global_step)

    def end_phase(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        if self.enabled:
            self.metrics.close()
            if self.writer is not None:
                self.writer.close()


def save_video_grid(videos: torch.Tensor, path: Path, scale: int = 4) -> None:
    """Write ``videos [n, c, f, h, w]`` as one GIF: samples side by side, the first three channels as RGB."""
    from PIL import Image

    v = videos.detach().float().cpu()
    rgb = v[:, :3] if v.shape[1] >= 3 else v[:, :1].expand(-1, 3, -1, -1, -1)
    lo, hi = rgb.amin(), rgb.amax()
    rgb = ((rgb - lo) / (hi - lo + 1e-8) * 255).clamp(0, 255).to(torch.uint8)
    n, _, f, h, w = rgb.shape
    frames = []
    for i in range(f):
        row = torch.cat([rgb[j, :, i] for j in range(n)], dim=2)  # c, h, n*w
        img = Image.fromarray(np.ascontiguousarray(row.permute(1, 2, 0).numpy()))
        frames.append(img.resize((img.width * scale, img.height * scale), Image.NEAREST))
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=200, loop=0)
