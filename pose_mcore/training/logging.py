"""Run logging: a progress bar with the latest metrics (on a terminal; elsewhere, as under CI, nohup or
SLURM, one plain line every ``log_every`` steps), a JSONL file of every logged step, TensorBoard scalars and
Weights & Biases (scalars and sample videos) when asked, and sample videos as GIF grids."""

from __future__ import annotations

import json
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm


@dataclass(frozen=True)
class WandbSettings:
    """Where a run logs in Weights & Biases (the run's ``wandb_*`` options)."""

    project: str
    name: str
    mode: str
    """``online``, ``offline``, or ``auto``: online when ``WANDB_API_KEY`` is set, else offline (``wandb sync``
    uploads an offline run later)."""
    config: dict[str, Any]


class WandbRun:
    """One W&B run per output folder: its id is kept in ``<output>/wandb_run_id``, so that every resume (a
    requeued job) continues the same run."""

    def __init__(self, output: Path, settings: WandbSettings) -> None:
        import wandb

        self.wandb = wandb
        id_file = output / "wandb_run_id"
        if not id_file.is_file():
            id_file.write_text(secrets.token_hex(4) + "\n")  # 8 characters of [0-9a-f], as W&B's own ids
        mode = settings.mode if settings.mode != "auto" else ("online" if os.environ.get("WANDB_API_KEY")
                                                              else "offline")
        self.run = wandb.init(project=settings.project, name=settings.name, id=id_file.read_text().strip(),
                              resume="allow", mode=mode, dir=str(output), config=settings.config)

    def log(self, values: dict[str, Any], step: int) -> None:
        self.run.log(values, step=step)

    def video(self, key: str, path: Path, step: int) -> None:
        self.run.log({key: self.wandb.Video(str(path), format=path.suffix.lstrip("."))}, step=step)

    def close(self) -> None:
        self.run.finish()


class RunLogger:
    """Rank 0 logs; other ranks hold a silent instance."""

    def __init__(self, output: Path, enabled: bool, tensorboard: bool, interactive: bool | None = None,
                 wandb: WandbSettings | None = None) -> None:
        self.enabled = enabled
        self.output = output
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        """A live progress bar (tqdm draws on stderr); without a terminal, plain lines on stdout."""
        self.bar: tqdm | None = None
        self.total = 0
        self.writer = None
        self.wandb: WandbRun | None = None
        if enabled:
            output.mkdir(parents=True, exist_ok=True)
            self.metrics = open(output / "metrics.jsonl", "a")  # noqa: SIM115 - closed in close()
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(output / "tensorboard"))
            if wandb is not None:
                self.wandb = WandbRun(output, wandb)

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
            if self.wandb is not None:
                self.wandb.log({f"{phase}/{k}": v for k, v in metrics.items()}, global_step)

    def video(self, name: str, path: Path, global_step: int) -> None:
        """A sample video written at ``path`` (GIF or MP4), as media in W&B."""
        if self.enabled and self.wandb is not None:
            self.wandb.video(f"samples/{name}", path, global_step)

    def end_phase(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        if self.enabled and not self.metrics.closed:
            self.metrics.close()
            if self.writer is not None:
                self.writer.close()
            if self.wandb is not None:
                self.wandb.close()


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
