"""The training loop. It knows phases only through ``Phase.step``: it feeds batches, guards against
non-finite steps, logs, samples and checkpoints, and hands each phase's models to the next one
(teacher -> Phase I -> Phase II)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist

from pose_mcore.checkpoint.convert import write_pose_checkpoint
from pose_mcore.checkpoint.io import CheckpointError
from pose_mcore.checkpoint.load import load_model
from pose_mcore.config.train import TrainConfig, TrainConfigError, to_dict
from pose_mcore.data.latents import DatasetError, LatentDataset
from pose_mcore.data.procedural import ProceduralConfig, ProceduralVideos
from pose_mcore.data.sampler import BatchStream
from pose_mcore.models.registry import family_of_preset
from pose_mcore.parallel.sharding import full_state_dict
from pose_mcore.parallel.state import ParallelInfo, initialize_parallel
from pose_mcore.pose.conditioning import Conditioner
from pose_mcore.pose.phase import Phase
from pose_mcore.pose.phase1 import Phase1
from pose_mcore.pose.phase2 import Phase2
from pose_mcore.pose.roles import Roles
from pose_mcore.pose.teacher import TeacherPhase
from pose_mcore.training.checkpointing import (
    latest_checkpoint,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from pose_mcore.training.logging import RunLogger, save_video_grid

PHASES = ("teacher", "phase1", "phase2")


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and where."""


class Trainer:
    def __init__(self, config: TrainConfig, exit_after: int | None = None) -> None:
        unknown = [p for p in config.phases if p not in PHASES]
        if unknown or not config.phases:
            raise TrainConfigError(f"phases {config.phases}: each must be one of {PHASES}")
        self.config = config
        self.exit_after = exit_after
        tp = config.tensor_parallel or int(os.environ.get("WORLD_SIZE", 1))
        self.info: ParallelInfo = initialize_parallel(tp, seed=config.seed)
        self.family = family_of_preset(config.preset)
        self.model_config = self.family.make_config(config.preset, tensor_model_parallel_size=tp,
                                                    sequence_parallel=tp > 1, **config.model)
        self.device = self.info.device
        self.output = Path(config.output_dir)
        self.logger = RunLogger(self.output, self.info.rank == 0, config.tensorboard)
        self.data = BatchStream(self._dataset(), config.batch_size, config.seed, self.info.dp_rank, self.info.dp_size)
        self.conditioner = Conditioner(self.model_config)
        self.text_dim = self.model_config.text_dim
        self.image_dim = getattr(self.model_config, "image_dim", None)
        if self.info.rank == 0:
            self.output.mkdir(parents=True, exist_ok=True)
            (self.output / "config.json").write_text(json.dumps(to_dict(config), indent=2, default=str))

    def _dataset(self):
        d = self.config.data
        if d.kind == "procedural":
            cfg = self.model_config
            return ProceduralVideos(ProceduralConfig(channels=cfg.out_channels, frames=d.frames, height=d.height,
                                                     width=d.width, text_dim=cfg.text_dim), d.size, d.seed)
        if d.kind == "latents":
            if d.path is None:
                raise TrainConfigError("data.kind='latents' needs data.path (the manifest)")
            try:
                return LatentDataset(d.path)
            except DatasetError as e:
                raise TrainConfigError(f"data: {e}") from e
        raise TrainConfigError(f"data.kind={d.kind!r} must be 'procedural' or 'latents'")

    # --- models per phase -------------------------------------------------------------------------

    def _teacher(self) -> torch.nn.Module:
        if self.config.teacher_checkpoint is None:
            return self.family.model_class(self.model_config).to(self.device)
        return self._load("teacher_checkpoint")

    def _load(self, key: str) -> torch.nn.Module:
        path = getattr(self.config, key)
        try:
            model = load_model(path, sequence_parallel=self.model_config.sequence_parallel)
        except CheckpointError as e:
            raise TrainConfigError(f"{key}: {e}") from e
        if type(model.config) is not type(self.model_config):
            raise TrainConfigError(f"{key} {path} holds a {type(model.config).__name__} model but the "
                                   f"preset {self.config.preset!r} is a {type(self.model_config).__name__}")
        return model.train()

    def _initial_generator(self, roles: Roles) -> None:
        if self.config.generator_checkpoint is not None:
            roles.generator.load_state_dict(self._load("generator_checkpoint").state_dict())

    def _build(self, name: str, teacher: torch.nn.Module, previous: Roles | None) -> tuple[Roles, Phase]:
        cfg = self.config
        seed = cfg.seed + 1000 * PHASES.index(name)
        if name == "teacher":
            roles = Roles(teacher, with_fake=False)
            return roles, TeacherPhase(roles, self.conditioner, cfg.teacher, seed, self.device)
        if name == "phase1":
            roles = Roles(teacher, cfg.phase1.lora_rank, cfg.phase1.lora_alpha)
            self._initial_generator(roles)
            return roles, Phase1(roles, self.conditioner, cfg.phase1, seed, self.device)
        if previous is None:  # the roles Phase I would have handed over (same weights are restored on resume)
            primed = "phase1" in cfg.phases
            previous = Roles(teacher, cfg.phase1.lora_rank, cfg.phase1.lora_alpha, with_fake=primed)
            self._initial_generator(previous)
        roles = previous
        phase = Phase2(roles, self.conditioner, cfg.phase2, seed, self.device, self.text_dim, self.image_dim)
        return roles, phase

    def _bf16(self) -> bool:
        precision = self.config.precision
        if precision not in ("auto", "bf16", "fp32"):
            raise TrainConfigError(f"precision={precision!r} must be 'auto', 'bf16' or 'fp32'")
        return precision == "bf16" or (precision == "auto" and self.device.type == "cuda")

    @staticmethod
    def _modules(roles: Roles) -> dict[str, torch.nn.Module]:
        named = {"generator": roles.generator, "base": roles.base, "ema": roles.ema, "head": roles.head,
                 "disc_backbone": roles.disc_backbone}
        return {k: v for k, v in named.items() if v is not None}

    def _steps(self, name: str) -> int:
        return getattr(self.config, name).steps

    # --- the loop ---------------------------------------------------------------------------------

    def run(self, resume: bool = False) -> Path:
        """Run every configured phase (continuing from the latest checkpoint with ``resume``); return the
        folder of the final generator (a pose_mcore checkpoint)."""
        cfg = self.config
        start_phase, start_step, global_step = 0, 0, 0
        restore = latest_checkpoint(self.output / "checkpoints")
        if restore is not None and not resume:
            raise TrainConfigError(f"output_dir {self.output} already holds checkpoints ({restore.name}): pass "
                                   "--resume to continue that run, or choose another output_dir")
        meta = None
        if restore is not None:
            meta = json.loads((restore / "meta.json").read_text())
            start_phase, start_step, global_step = cfg.phases.index(meta["phase"]), meta["step"], meta["global_step"]
        teacher = self._teacher()
        trained_teacher = self.output / "teacher"
        if (cfg.teacher_checkpoint is None and "teacher" in cfg.phases
                and start_phase > cfg.phases.index("teacher")):  # resuming after this run trained the teacher
            teacher = load_model(trained_teacher, sequence_parallel=self.model_config.sequence_parallel).train()
        roles: Roles | None = None
        steps_this_run = 0
        for p_index in range(start_phase, len(cfg.phases)):
            name = cfg.phases[p_index]
            roles, phase = self._build(name, teacher, roles)
            phase.bf16 = self._bf16()
            step = 0
            if meta is not None and p_index == start_phase:
                _, state = load_checkpoint(restore, self._modules(roles))
                phase.load_state_dict(state["phase"])
                set_rng_state(state["rng"])
                self.data.position = meta["data_position"]
                step = start_step
                if self.info.rank == 0:
                    print(f"resumed {name} at step {step} from {restore}", flush=True)
            total = self._steps(name)
            self.logger.start_phase(name, total, step)
            consecutive = 0
            t_last = time.perf_counter()
            while step < total:
                batch = {k: v.to(self.device) for k, v in self.data.next().items()}
                metrics = phase.step(batch)
                step += 1
                global_step += 1
                steps_this_run += 1
                consecutive = 0 if metrics["stepped"] else consecutive + 1
                if consecutive >= cfg.max_nonfinite:
                    raise TrainingError(f"{name}: stopped after {consecutive} consecutive non-finite steps "
                                        f"(step {step}); lower the learning rate or check the data")
                now = time.perf_counter()
                self.logger.log(name, step, global_step, metrics, 1.0 / max(now - t_last, 1e-9),
                                write=step % max(cfg.log_every, 1) == 0 or step == total)
                t_last = now
                if cfg.sample_every and step % cfg.sample_every == 0:
                    self.sample(phase, batch, self.output / "samples" / f"{name}-{step:06d}.gif")
                if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == total:
                    self._checkpoint(name, step, global_step, roles, phase)
                if self.exit_after is not None and steps_this_run >= self.exit_after:
                    self.logger.end_phase()
                    raise SystemExit(f"exit after {steps_this_run} steps (as if the job were stopped)")
            self.logger.end_phase()
            if name == "teacher":
                teacher = roles.generator
                self.export_model(teacher, trained_teacher)
            self.sample(phase, batch, self.output / "samples" / f"{name}-final.gif")
        self.logger.close()
        return self.export_model(roles.generator, self.output / "generator")

    def _checkpoint(self, name: str, step: int, global_step: int, roles: Roles, phase: Phase) -> None:
        meta = {"phase": name, "step": step, "global_step": global_step, "data_position": self.data.position}
        save_checkpoint(self.output / "checkpoints", meta, self._modules(roles),
                        {"phase": phase.state_dict(), "rng": rng_state()})

    def sample(self, phase: Phase, batch: dict[str, torch.Tensor], path: Path) -> None:
        """One-step samples of the generator (the teacher itself in the teacher phase: 1 step)."""
        conds = self.conditioner(batch)
        noise = torch.randn(batch["latents"].shape, generator=torch.Generator().manual_seed(0)).to(batch["latents"])
        with torch.no_grad():
            video = phase.generate(conds, noise)
        if self.info.rank == 0:
            save_video_grid(torch.cat([batch["latents"][:4], video[:4]]), path)

    def export_model(self, model: torch.nn.Module, dst: Path) -> Path:
        """Write a model (the trained teacher, the final generator) as a pose_mcore checkpoint."""
        state = full_state_dict(model)
        if self.info.rank == 0:
            write_pose_checkpoint(dst, state, self.model_config, converted_from="training")
        dist.barrier()
        return dst
