"""Entry point that ``examples/pretrain_pose.sh`` executes on every rank.

The POSE training phases have not landed yet, so this runs a DiT (any Wan or HunyuanVideo preset)
with the requested tensor and sequence parallelism on a synthetic batch of random latents and
conditions: a few flow-matching steps (velocity loss, Adam), printing the loss. It says so when it
starts.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

# megatron-core's import-time notices that say nothing to a user of this command
for _message in (".*tp_group is None", ".*CUDA_DEVICE_MAX_CONNECTIONS", ".*is deprecated"):
    warnings.filterwarnings("ignore", message=_message)

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from megatron.core import parallel_state  # noqa: E402
from tqdm import tqdm  # noqa: E402

from pose_mcore.config.base import RECOMPUTE_EVERY_BLOCK  # noqa: E402
from pose_mcore.models.registry import ALL_PRESETS, family_of_preset  # noqa: E402
from pose_mcore.parallel.sequence import finalize_tensor_parallel_grads  # noqa: E402
from pose_mcore.parallel.state import destroy_parallel, initialize_parallel  # noqa: E402


def average_data_parallel_grads(model: torch.nn.Module) -> None:
    """Average gradients over the data-parallel ranks (plain all-reduce; training will use megatron DDP)."""
    if parallel_state.get_data_parallel_world_size() == 1:
        return
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, group=parallel_state.get_data_parallel_group())
            p.grad /= parallel_state.get_data_parallel_world_size()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pose-train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny-t2v", choices=list(ALL_PRESETS), help="model preset (Wan or Hunyuan)")
    p.add_argument("--tp", type=int, default=None, help="tensor-parallel size (default: all ranks)")
    p.add_argument("--no-sequence-parallel", dest="sequence_parallel", action="store_false",
                   help="keep activations replicated across TP ranks (sequence parallelism is on when TP > 1)")
    p.add_argument("--steps", type=int, default=5, help="synthetic training steps")
    p.add_argument("--batch", type=int, default=2, help="samples per data-parallel rank")
    p.add_argument("--frames", type=int, default=3, help="latent frames")
    p.add_argument("--height", type=int, default=10, help="latent height")
    p.add_argument("--width", type=int, default=14, help="latent width")
    p.add_argument("--text-len", type=int, default=16, help="text tokens")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--recompute", action="store_true", help="activation checkpointing for every block")
    p.add_argument("--seed", type=int, default=1234)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    tp = args.tp or int(os.environ.get("WORLD_SIZE", 1))
    info = initialize_parallel(tp, seed=args.seed)
    extra = RECOMPUTE_EVERY_BLOCK if args.recompute else {}
    family = family_of_preset(args.preset)
    cfg = family.make_config(args.preset, tensor_model_parallel_size=tp,
                             sequence_parallel=args.sequence_parallel and tp > 1, **extra)
    model = family.model_class(cfg).to(info.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    if info.rank == 0:
        print(f"pose_mcore: POSE training has not landed yet; running {args.steps} flow-matching steps of "
              f"{args.preset} on a synthetic batch (random latents) with TP={tp}, "
              f"sequence parallel={cfg.sequence_parallel}, DP={info.dp_size}, world={info.world_size}.", flush=True)
    gen = torch.Generator().manual_seed(args.seed + info.dp_rank)
    shape = (args.batch, cfg.out_channels, args.frames, args.height, args.width)
    bar = tqdm(range(args.steps), disable=info.rank != 0, desc="steps")
    for step in bar:
        x0 = torch.randn(shape, generator=gen).to(info.device)
        eps = torch.randn(shape, generator=gen).to(info.device)
        t = torch.rand(args.batch, generator=gen).to(info.device)
        conditions = {k: v.to(info.device)
                      for k, v in family.random_conditions(cfg, args.batch, args.text_len, gen).items()}
        x_t = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * eps
        if cfg.in_channels > cfg.out_channels:  # I2V: condition channels beside the noisy latent
            cond = torch.randn(args.batch, cfg.in_channels - cfg.out_channels, *shape[2:], generator=gen)
            x_t = torch.cat([x_t, cond.to(info.device)], dim=1)
        start = time.perf_counter()
        loss = F.mse_loss(model(x_t, 1000 * t, **conditions).sample, eps - x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        finalize_tensor_parallel_grads(model)
        average_data_parallel_grads(model)
        optimizer.step()
        if info.rank == 0:
            tqdm.write(f"step {step + 1}/{args.steps} loss {loss.item():.5f} ({time.perf_counter() - start:.2f} s)")
    destroy_parallel()


if __name__ == "__main__":
    main()
