"""The training loop. It knows phases only through ``Phase.step``: it feeds batches, guards against
non-finite steps, logs, samples and checkpoints, and hands each phase's models to the next one
(teacher -> Phase I -> Phase II)."""

from __future__ import annotations

import gc
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import default_collate

from pose_mcore.checkpoint.io import CheckpointError, atomic_destination
from pose_mcore.checkpoint.load import load_model
from pose_mcore.config.train import TrainConfig, TrainConfigError, to_dict
from pose_mcore.data.latents import DatasetError, LatentDataset
from pose_mcore.data.procedural import ProceduralConfig, ProceduralVideos
from pose_mcore.data.sampler import BatchStream
from pose_mcore.data.video import write_mp4
from pose_mcore.encoders.model import ModelEncoders
from pose_mcore.engine.ddp import release
from pose_mcore.evaluation.quality import HeldOut, report_table, sample_videos
from pose_mcore.faults import fault_point
from pose_mcore.models.experts import guidance_of
from pose_mcore.models.registry import family_of_preset
from pose_mcore.parallel.replicas import ReplicaDrift, check_replicas
from pose_mcore.parallel.state import ParallelInfo, deterministic_mode, initialize_parallel
from pose_mcore.pose.build import build_phase
from pose_mcore.pose.conditioning import Conditioner, missing_fields, needs_image
from pose_mcore.pose.phase import Phase
from pose_mcore.pose.roles import Roles
from pose_mcore.training.checkpointing import (
    export_pose_checkpoint,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from pose_mcore.training.console import record_start, stamped_output
from pose_mcore.training.logging import RunLogger, WandbSettings, save_video_grid
from pose_mcore.training.stopping import RunStopped, StopRequests
from pose_mcore.training.validate import global_batch_size, validate_train_config


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and where."""


class Trainer:
    def __init__(self, config: TrainConfig, exit_after: int | None = None) -> None:
        world = dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", 1))
        # every problem of the config, before any process group, model or file exists
        self.model_config = validate_train_config(config, world)
        self.config = config
        self.exit_after = exit_after
        self.started = time.monotonic()
        self.save_seconds = 0.0
        """The longest checkpoint save of this run (or of the run it resumed): part of the margin a time limit keeps."""
        tp, cp = self.model_config.tensor_model_parallel_size, self.model_config.context_parallel_size
        if config.deterministic:
            deterministic_mode()
        self.info: ParallelInfo = initialize_parallel(tp, cp, seed=config.seed)
        self.family = family_of_preset(config.preset)
        self.device = self.info.device
        self.output = Path(config.output_dir)
        self.logger: RunLogger | None = None
        """Created when the run starts (a finished run run again writes nothing)."""
        global_batch = global_batch_size(config, self.info.dp_size)
        accumulation = global_batch // (config.micro_batch_size * self.info.dp_size)
        dataset = self._dataset()
        try:
            self.data = BatchStream(dataset, config.micro_batch_size, accumulation, config.seed,
                                    self.info.dp_rank, self.info.dp_size)
        except ValueError as e:  # the procedural data's size is validated: a latent dataset's only now
            raise TrainConfigError(f"data.path={config.data.path}: {e} (global_batch_size {global_batch})") from e
        self._decoder: ModelEncoders | None = None
        """The model folder's VAE for sample videos, loaded at the first sample (rank 0)."""
        self.conditioner = Conditioner(self.model_config, getattr(dataset, "negative", None),
                                       stand_ins=isinstance(dataset, ProceduralVideos))

    def layout(self) -> str:
        """The run's layout in one line: how the ranks split the model and the batch, and the engine."""
        c, info, model = self.config, self.info, self.model_config
        group = info.dp_size * model.context_parallel_size
        if not c.distributed_optimizer or group == 1:
            optimizer = "replicated optimizer"
        else:
            over = f"{info.dp_size} DP x {model.context_parallel_size} CP" if model.context_parallel_size > 1 \
                else f"{info.dp_size} DP"
            optimizer = f"distributed optimizer over {over} ranks"
        sp = "+SP" if model.sequence_parallel else ""
        batch = f"micro-batch {c.micro_batch_size} x {self.data.accumulation} accumulation x DP {info.dp_size}"
        return (f"TP={info.tp_size}{sp} CP={model.context_parallel_size} DP={info.dp_size}, {batch} = global batch "
                f"{self.data.global_batch}, {optimizer}, precision {c.precision} ({self._precision()})")

    def _precision(self) -> str:
        kind = self.device.type
        weights = "bf16" if self.config.bf16(kind) else "fp32"
        return f"{weights} weights" + (", bf16 autocast" if self.config.autocast(kind) else "")

    def _dataset(self):
        d = self.config.data
        if d.kind == "procedural":
            return ProceduralVideos(ProceduralConfig.for_model(self.model_config, d.frames, d.height, d.width), d.size,
                                    d.seed)
        try:
            dataset = LatentDataset(d.path)
        except DatasetError as e:
            raise TrainConfigError(f"data: {e}") from e
        problems = missing_fields(self.model_config, dataset.fields,
                                  None if dataset.negative is None else dataset.negative.keys())
        if problems:
            raise TrainConfigError("\n".join(f"data.path={d.path}: {p} (preset {self.config.preset!r}; prepare the "
                                             "dataset with pose-prepare --model <its model folder>)" for p in problems))
        return dataset

    # --- models per phase -------------------------------------------------------------------------

    def _teacher(self) -> torch.nn.Module:
        if self.config.teacher_checkpoint is None:
            return self.family.build(self.model_config).to(self.device)
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
        want = getattr(self.model_config, "boundary", None) if key == "teacher_checkpoint" else None
        have = getattr(model.config, "boundary", None)
        if (want is None) != (have is None):
            what = {True: "one model", False: "two experts"}
            needs = f"the preset {self.config.preset!r}" if key == "teacher_checkpoint" else "the generator"
            raise TrainConfigError(f"{key} {path} holds {what[have is None]} but {needs} is {what[want is None]}")
        return model.train()

    def _initial_generator(self, roles: Roles) -> None:
        if self.config.generator_checkpoint is not None:
            roles.generator.load_state_dict(self._load("generator_checkpoint").state_dict())

    def _build(self, name: str, teacher: torch.nn.Module, previous: Roles | None) -> tuple[Roles, Phase]:
        return build_phase(name, self.config, teacher, self.conditioner, self.device, previous,
                           self._initial_generator, self.config.bf16(self.device.type),
                           self.config.autocast(self.device.type))

    def _steps(self, name: str) -> int:
        return getattr(self.config, name).steps

    # --- the loop ---------------------------------------------------------------------------------

    def _finished(self, meta: dict | None) -> bool:
        """Whether the run's last phase is checkpointed at its last step and its generator is exported."""
        last = self.config.phases[-1]
        return (meta is not None and meta["phase"] == last and meta["step"] >= self._steps(last)
                and (self.output / "generator" / "config.json").is_file())

    def run(self, resume: bool = False) -> Path:
        """Run every configured phase (:meth:`_run`), stopping early on ``exit_signals`` or ``exit_duration_mins``
        (:class:`pose_mcore.training.stopping.RunStopped`, after a checkpoint)."""
        cfg = self.config
        budget = None if cfg.exit_duration_mins is None else 60 * cfg.exit_duration_mins
        self.stops = StopRequests(cfg.exit_signals, budget, self.started, self.device)
        try:
            with stamped_output(self.info.rank):
                return self._run(resume)
        finally:
            self.stops.close()

    def _run(self, resume: bool = False) -> Path:
        """Run every configured phase (continuing from the latest checkpoint with ``resume``); return the
        folder of the final generator (a pose_mcore checkpoint).

        A run can be killed anywhere and resumed with the same command: it continues from its latest
        checkpoint and ends bit-identical to an uninterrupted run on the same layout. A phase whose last
        step is checkpointed finishes its remaining work (export, final sample); a finished run run again
        says so and returns without training or writing anything."""
        cfg = self.config
        start_phase, start_step, global_step = 0, 0, 0
        restore = latest_checkpoint(self.output / "checkpoints")
        if restore is not None and not resume:
            raise TrainConfigError(f"output_dir {self.output} already holds checkpoints ({restore.name}): pass "
                                   "--resume to continue that run, or choose another output_dir")
        meta = None if restore is None else json.loads((restore / "meta.json").read_text())
        if meta is not None:
            self.save_seconds = meta.get("save_seconds", 0.0)
        if self._finished(meta):
            if self.info.rank == 0:
                report = self.output / "quality.md"
                print(f"pose-train: the run in {self.output} is finished ({restore.name}); its generator is "
                      f"{self.output / 'generator'}{f', its report {report}' if report.is_file() else ''}. "
                      "Nothing to do.", flush=True)
            return self.output / "generator"
        if meta is not None:
            if meta["phase"] not in cfg.phases:
                raise TrainConfigError(f"phases {cfg.phases}: the checkpoint {restore} is of phase {meta['phase']!r}")
            start_phase, start_step, global_step = cfg.phases.index(meta["phase"]), meta["step"], meta["global_step"]
        trained_teacher = self.output / "teacher"
        if (cfg.teacher_checkpoint is None and "teacher" in cfg.phases
                and start_phase > cfg.phases.index("teacher")):  # resuming after this run trained the teacher
            teacher = load_model(trained_teacher, sequence_parallel=self.model_config.sequence_parallel).train()
        else:
            teacher = self._teacher()
        # nothing is written before the inputs have been read
        wandb = None if not cfg.wandb else WandbSettings(cfg.wandb_project, cfg.wandb_name or self.output.name,
                                                         cfg.wandb_mode, to_dict(cfg))
        self.logger = RunLogger(self.output, self.info.rank == 0, cfg.tensorboard, wandb=wandb)
        if self.info.rank == 0:
            (self.output / "config.json").write_text(json.dumps(to_dict(cfg), indent=2, default=str))
            record_start(self.output, to_dict(cfg), self.layout(), None if restore is None else str(restore))
        roles: Roles | None = None
        steps_this_run = 0
        for p_index in range(start_phase, len(cfg.phases)):
            name = cfg.phases[p_index]
            if p_index > 0:
                fault_point("phase_start", global_step)
                # the previous phase's optimisers go before this one builds its own, and with them whatever of
                # that phase sits in reference cycles (megatron-core DDP's gradient hooks hold their wrapper):
                # left to Python's collector, a whole phase's states could outlive it
                phase = None
                gc.collect()
            roles, phase = self._build(name, teacher, roles)
            teacher = None  # the roles hold their own copies: a whole model less per rank while training
            step = 0
            if meta is not None and p_index == start_phase:
                _, reader = load_checkpoint(restore, roles.named_roles())
                phase.load_state_dict(meta["phase_state"], reader)
                self.data.position = meta["data_position"]
                step = start_step
                if self.info.rank == 0:
                    print(f"resumed {name} at step {step} from {restore}", flush=True)
            total = self._steps(name)
            self.logger.start_phase(name, total, step)
            consecutive = 0
            t_last = time.perf_counter()
            longest_step = 0.0
            while step < total:
                micro_batches = [{k: v.to(self.device) for k, v in b.items()} for b in self.data.next()]
                metrics = phase.step(micro_batches)
                step += 1
                global_step += 1
                steps_this_run += 1
                if cfg.check_replicas_every and step % cfg.check_replicas_every == 0:
                    try:
                        check_replicas(phase.replicas(), f"{name} step {step}")
                    except ReplicaDrift as e:
                        raise TrainingError(str(e)) from e
                fault_point("step", global_step)
                consecutive = 0 if metrics["stepped"] else consecutive + 1
                if consecutive >= cfg.max_nonfinite:
                    raise TrainingError(f"{name}: stopped after {consecutive} consecutive non-finite steps "
                                        f"(step {step}); lower the learning rate or check the data")
                now = time.perf_counter()
                self.logger.log(name, step, global_step, metrics, 1.0 / max(now - t_last, 1e-9),
                                write=step % cfg.log_every == 0 or step == total)
                longest_step = max(longest_step, now - t_last)
                t_last = now
                if cfg.sample_every and step % cfg.sample_every == 0:
                    self.sample(phase, self.output / "samples" / f"{name}-{step:06d}", global_step)
                saved = None
                if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == total:
                    saved = self._checkpoint(name, step, global_step, roles, phase)
                reason = self.stops.due(longest_step + self.save_seconds)
                if reason is not None:
                    self.logger.end_phase()
                    self._stop(reason, saved or self._checkpoint(name, step, global_step, roles, phase), name, step)
                if self.exit_after is not None and steps_this_run >= self.exit_after:
                    self.logger.end_phase()
                    raise SystemExit(f"exit after {steps_this_run} steps (as if the job were stopped)")
            fault_point("phase_end", global_step)
            self.logger.end_phase()
            if name == "teacher":
                teacher = roles.generator
                release(teacher)  # frozen from here on: its gradient buffers and main weights go
                self.export_model(teacher, trained_teacher)
            self.sample(phase, self.output / "samples" / f"{name}-final", global_step)
        self.logger.close()
        generator = self.export_model(roles.generator, self.output / "generator")
        if cfg.evaluation.videos and cfg.data.kind == "procedural" and roles.base is not None:
            self.report(roles, phase)
        return generator

    def report(self, roles: Roles, phase: Phase) -> None:
        """The finished run measured on held-out procedural videos (``evaluation``): the one-step generator against
        the teacher at 1 NFE and at its full step count; rank 0 prints the table with where the samples and the
        generator are, and writes it to ``quality.md`` (the numbers to ``quality.json``)."""
        cfg, data = self.config, self.config.data
        start = time.perf_counter()
        held = HeldOut.procedural(self.model_config, cfg.evaluation.videos, data.frames, data.height, data.width)
        guidance, low, steps = cfg.phase1.real_guidance, cfg.phase1.real_guidance_low, cfg.evaluation.teacher_steps
        unguided = guidance == 1 and low in (None, 1)
        full = steps * (1 if unguided else 2)
        scales = f"{guidance:g}" if low is None else f"{guidance:g} (high noise) / {low:g} (low noise)"
        rows = []
        with roles.real() as teacher, phase.amp():
            for row, model, sampler, n, nfe in ((f"teacher, {steps} Euler steps with guidance {scales}", teacher,
                                                 "teacher", steps, full),
                                                ("teacher, 1 step", teacher, "student", 1, 1),
                                                ("POSE generator, 1 step", roles.generator, "student", 1, 1)):
                videos, _ = sample_videos(model, self.conditioner, held.prompts, sampler, n,
                                          guidance_of(model, guidance, low), cfg.seed)
                rows.append({"row": row, "nfe": nfe, **held.measure(videos)})
        if self.info.rank != 0:
            return
        last = cfg.phases[-1]
        i2v = needs_image(self.model_config)
        lines = [f"# {self.output.name}: {cfg.evaluation.videos} held-out videos ({data.frames} x {data.height} x "
                 f"{data.width}, never trained on)", "", *report_table(rows, i2v), "",
                 "FD: Frechet distance to held-out real videos in a fixed random 3-D conv feature space. one shape / "
                 "colour / direction: fraction of videos with one shape, of the prompted colour, moving the prompted "
                 "way." + i2v * " first-frame MSE: against the condition." + f" Measured in "
                 f"{time.perf_counter() - start:.0f} s.", "", f"- samples (real videos left, one-step samples right): "
                 f"{self.output / 'samples' / f'{last}-final'}{'.mp4' if cfg.model_dir else '.gif'}",
                 f"- generator: {self.output / 'generator'} (pose_mcore checkpoint; `pose-convert export` writes "
                 "diffusers or official files)"]
        with atomic_destination(self.output / "quality.json", overwrite=True) as tmp:
            tmp.write_text(json.dumps(rows, indent=2))
        with atomic_destination(self.output / "quality.md", overwrite=True) as tmp:
            tmp.write_text("\n".join(lines) + "\n")
        print("\n".join(lines), flush=True)

    def _checkpoint(self, name: str, step: int, global_step: int, roles: Roles, phase: Phase) -> Path:
        start = time.perf_counter()
        meta = {"phase": name, "step": step, "global_step": global_step, "data_position": self.data.position,
                "phase_state": phase.state_dict(), "save_seconds": self.save_seconds}
        path = save_checkpoint(self.output / "checkpoints", meta, roles.named_roles(), phase.pieces())
        self.save_seconds = max(self.save_seconds, time.perf_counter() - start)
        return path

    def _stop(self, reason: str, path: Path, name: str, step: int) -> None:
        """Raise :class:`RunStopped` once ``name``'s ``step`` is checkpointed at ``path``; rank 0 says why and what to
        do, and writes it where the launcher looks (``POSE_STOP_FILE``)."""
        message = (f"stopped at {name} step {step} ({reason}); checkpoint {path}. Resume with the same command and "
                   "--resume")
        self.logger.close()
        if self.info.rank == 0:
            print(f"pose-train: {message}", flush=True)
            stop_file = os.environ.get("POSE_STOP_FILE")
            if stop_file:
                Path(stop_file).write_text(message + "\n")
        raise RunStopped(message)

    def sample_batch(self) -> dict[str, torch.Tensor]:
        """The first samples of the dataset: the same prompts in every sample grid of the run (and the same
        on every rank, as the tensor-parallel generator needs)."""
        dataset = self.data.dataset
        items = [dataset[i] for i in range(min(4, len(dataset)))]
        return {k: v.to(self.device) for k, v in default_collate(items).items()}

    def sample(self, phase: Phase, path: Path, global_step: int) -> None:
        """One-step samples of the generator (the teacher itself in the teacher phase: 1 step) under the
        dataset's first videos: an MP4 decoded by the model folder's VAE when ``model_dir`` is set, else a GIF
        of latent channels (``path`` without suffix); also W&B media at ``global_step`` when logging there."""
        batch = self.sample_batch()
        conds = self.conditioner(batch)
        noise = torch.randn(batch["latents"].shape, generator=torch.Generator().manual_seed(0)).to(batch["latents"])
        with torch.no_grad():
            video = phase.generate(conds, noise)
        if self.info.rank != 0:
            return
        pair = torch.cat([batch["latents"][:4], video[:4]])
        if self.config.model_dir is None:
            save_video_grid(pair, path.with_suffix(".gif"))
            self.logger.video(path.name, path.with_suffix(".gif"), global_step)
            return
        if self._decoder is None:
            self._decoder = ModelEncoders(self.config.model_dir, self.device, decode_only=True,
                                          vae_tile=self.config.vae_tile)
        frames = np.concatenate([self._decoder.decode(v[None]) for v in pair])  # the data's videos, then the samples
        n = len(frames) // 2
        grid = np.concatenate([np.concatenate(list(frames[:n]), axis=2), np.concatenate(list(frames[n:]), axis=2)],
                              axis=1)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_destination(path.with_suffix(".mp4"), overwrite=True) as tmp:
            write_mp4(grid, tmp)
        self.logger.video(path.name, path.with_suffix(".mp4"), global_step)

    def export_model(self, model: torch.nn.Module, dst: Path) -> Path:
        """Write a model (the trained teacher, the final generator) as a pose_mcore checkpoint, streamed."""
        return export_pose_checkpoint(model, dst)
