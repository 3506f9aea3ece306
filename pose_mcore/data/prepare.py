"""``pose-prepare``: videos (or images) and captions -> a latent dataset, through the model folder's own
encoders (:class:`pose_mcore.encoders.ModelEncoders`).

    pose-prepare --input DIR | LIST.csv | LIST.jsonl --model MODEL_DIR --out DATA_DIR
                 [--height 480 --width 832 --frames 81] [--fps F] [--negative-prompt TEXT]
                 [--per-shard 64] [--dtype bf16|fp32] [--max-sequence-length N] [--vae-tile PX]
                 [--read-ahead 2]

Input: a folder of video / image files, each with a sidecar caption (``clip.mp4`` + ``clip.txt``), or
a CSV / JSONL listing with a file column (``file``, ``video`` or ``path``; relative to the listing) and
a caption column (``caption``, ``text`` or ``prompt``). The items are cut, in order, into shards of
``--per-shard``; under torchrun rank ``r`` prepares shards ``r, r + world, ...``. Each finished shard is
``shard-K.safetensors`` plus ``shard-K.jsonl`` (its manifest lines and skipped files), both written
atomically, so running the command again skips finished shards (resume; any world size). Rank 0
writes ``negative.safetensors`` (the negative / empty prompt, encoded once) first, and at the end
``manifest.jsonl`` (only complete samples) and ``report.json`` (counts and every skipped file with its
reason). While a clip is encoded, threads decode the next ``--read-ahead`` clips.

Exit codes: 0 done (skipped files are listed, not fatal); 1 no sample could be prepared; 2 bad
arguments or a model folder that cannot serve (nothing written).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
import torch.distributed as dist
from PIL import Image
from tqdm import tqdm

from pose_mcore.notices import quiet_third_party_warnings

quiet_third_party_warnings()  # before megatron-core is imported: it warns at import

from pose_mcore.checkpoint.io import atomic_destination  # noqa: E402
from pose_mcore.data.latents import shard_entries, write_manifest, write_negative  # noqa: E402
from pose_mcore.data.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES, VideoError, read_clip  # noqa: E402
from pose_mcore.encoders.model import EncoderError, ModelEncoders  # noqa: E402
from pose_mcore.parallel.rank0 import on_rank0  # noqa: E402

FILE_COLUMNS = ("file", "video", "path")
CAPTION_COLUMNS = ("caption", "text", "prompt")


class PrepareError(ValueError):
    """Bad arguments or input listing: the command stops before any work (exit 2)."""


@dataclass(frozen=True)
class Item:
    path: Path
    caption: str | None
    """None: the caption is missing (the item is skipped and reported)."""


def _pick(row: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((row[n] for n in names if row.get(n) not in (None, "")), None)


def list_items(source: Path) -> list[Item]:
    """The (file, caption) items of an input folder or CSV / JSONL listing, in a fixed order."""
    if source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES + IMAGE_SUFFIXES)
        items = []
        for p in files:
            txt = p.with_suffix(".txt")
            items.append(Item(p, txt.read_text().strip() if txt.is_file() else None))
        return items
    if not source.is_file():
        raise PrepareError(f"--input {source}: no such folder or listing")
    if source.suffix.lower() == ".csv":
        with source.open(newline="") as f:
            rows = list(csv.DictReader(f))
    elif source.suffix.lower() in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate(source.read_text().splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except ValueError as e:
                    raise PrepareError(f"{source}:{n}: not a JSON object ({e})") from e
    else:
        raise PrepareError(f"--input {source}: a folder, .csv or .jsonl listing")
    items = []
    for n, row in enumerate(rows, start=1):
        file = _pick(row, FILE_COLUMNS)
        if file is None:
            raise PrepareError(f"{source}: row {n} has no file column ({', '.join(FILE_COLUMNS)})")
        items.append(Item(source.parent / file, _pick(row, CAPTION_COLUMNS)))
    return items


def read_item(item: Item, args: argparse.Namespace) -> list[Image.Image]:
    """An item's frames at the dataset's size and rate; VideoError for an unreadable or uncaptioned one."""
    if item.caption is None:
        raise VideoError(f"{item.path}: no caption (sidecar {item.path.with_suffix('.txt').name} or a caption column)")
    return read_clip(item.path, args.frames, args.height, args.width, args.fps)


def read_ahead(items: list[Item], args: argparse.Namespace, depth: int
               ) -> Iterator[tuple[Item, list[Image.Image] | VideoError]]:
    """``(item, frames or its VideoError)`` in order, the next ``depth`` items decoded by threads while the
    caller encodes (PyAV and Pillow release the GIL); at most ``depth + 1`` clips in memory. ``depth`` 0:
    one at a time in this thread."""

    def read(item: Item) -> list[Image.Image] | VideoError:
        try:
            return read_item(item, args)
        except VideoError as e:
            return e

    if depth == 0:
        yield from ((item, read(item)) for item in items)
        return
    rest = iter(items)
    with ThreadPoolExecutor(max_workers=depth) as pool:
        pending = deque((item, pool.submit(read, item)) for item in islice(rest, depth))
        while pending:
            item, future = pending.popleft()
            later = next(rest, None)
            if later is not None:
                pending.append((later, pool.submit(read, later)))
            yield item, future.result()


def encode_item(encoders: ModelEncoders, frames: list[Image.Image], caption: str, args: argparse.Namespace
                ) -> dict[str, torch.Tensor]:
    """Every conditioning field of one clip (unbatched), in the stored dtype."""
    sample = {"latents": encoders.encode_video(frames)[None]}
    # HunyuanVideo-I2V's text encoder reads the first frame with the prompt
    sample.update(encoders.encode_prompts([caption], frames[0] if encoders.reads_image_with_prompt else None))
    sample.update(encoders.encode_first_frame(frames[0], args.frames, args.height, args.width))
    return stored({k: v[0] for k, v in sample.items()}, args.store_dtype)


def stored(fields: dict[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Fields as the dataset stores them: floating ones in ``dtype``, on the CPU."""
    return {k: (v.to(dtype) if v.is_floating_point() else v).cpu() for k, v in fields.items()}


def prepare_shard(encoders: ModelEncoders, items: list[Item], index: int, start: int, args: argparse.Namespace,
                  bar: tqdm) -> None:
    """Encode one shard's items; write its tensors, then its ``.jsonl`` (the shard's done marker)."""
    samples, names, skipped = [], [], []
    for i, (item, frames) in enumerate(read_ahead(items, args, args.read_ahead)):
        if isinstance(frames, VideoError):
            skipped.append({"file": str(item.path), "reason": str(frames)})
            tqdm.write(f"pose-prepare: skipped {frames}", file=sys.stderr)
        else:
            samples.append(encode_item(encoders, frames, item.caption, args))
            names.append(f"{start + i:08d}")
        bar.update(1)
    out = Path(args.out)
    entries = shard_entries(samples, out / f"shard-{index:05d}.safetensors", names) if samples else []
    with atomic_destination(out / f"shard-{index:05d}.jsonl", overwrite=True) as tmp:
        tmp.write_text(json.dumps({"entries": entries, "skipped": skipped}) + "\n")


def finish(out: Path, shards: int, items: int, seconds: float) -> int:
    """Rank 0: the manifest (complete samples, in input order) and the report; the exit code."""
    entries, skipped = [], []
    for k in range(shards):
        record = json.loads((out / f"shard-{k:05d}.jsonl").read_text())
        entries += record["entries"]
        skipped += record["skipped"]
    if entries:
        write_manifest([json.dumps(e) for e in entries], out / "manifest.jsonl")
    size = sum(p.stat().st_size for p in out.glob("*.safetensors"))
    report = {"items": items, "samples": len(entries), "skipped": skipped, "bytes": size,
              "seconds_this_run": round(seconds, 3)}
    with atomic_destination(out / "report.json", overwrite=True) as tmp:
        tmp.write_text(json.dumps(report, indent=1) + "\n")
    # each skipped file had its line on stderr when it was met (in this run or the one that wrote its shard)
    print(f"pose-prepare: {len(entries)} samples in {out / 'manifest.jsonl'}, {len(skipped)} skipped "
          f"(listed in {out / 'report.json'}), {size / 2**20:.1f} MiB", flush=True)
    return 0 if entries else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pose-prepare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", type=Path, required=True, help="folder of videos + .txt captions, or a .csv / .jsonl")
    p.add_argument("--model", type=Path, required=True, help="diffusers model folder (model_index.json, vae/, ...)")
    p.add_argument("--out", type=Path, required=True, help="dataset folder (manifest.jsonl, shards)")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=832)
    p.add_argument("--frames", type=int, default=81, help="frames per clip: 4k+1 for the Wan and Hunyuan VAEs")
    p.add_argument("--fps", type=float, default=None, help="resample clips to this rate (default: the file's)")
    p.add_argument("--negative-prompt", default="", help="encoded once: the unconditional input of CFG")
    p.add_argument("--per-shard", type=int, default=64)
    p.add_argument("--dtype", choices=("bf16", "fp32"), default=None,
                   help="encoder and stored dtype (default: bf16 on a GPU, fp32 on the CPU)")
    p.add_argument("--max-sequence-length", type=int, default=None,
                   help="text tokens (default: the pipeline's, Wan 512, HunyuanVideo 256)")
    p.add_argument("--prompt-template", type=Path, default=None,
                   help="HunyuanVideo: a JSON file {template, crop_start} replacing the pipeline's default")
    p.add_argument("--read-ahead", type=int, default=2, metavar="N",
                   help="clips decoded by N threads while the encoders work (0: none)")
    p.add_argument("--vae-tile", type=int, default=None, metavar="PX",
                   help="encode in spatial tiles of PX pixels (e.g. 256; a multiple of 4x the VAE's downsampling)")
    args = p.parse_args(argv)
    if args.per_shard < 1:
        raise PrepareError(f"--per-shard {args.per_shard}: must be positive")
    if args.read_ahead < 0:
        raise PrepareError(f"--read-ahead {args.read_ahead}: must be >= 0")
    if args.fps is not None and args.fps <= 0:
        raise PrepareError(f"--fps {args.fps}: must be positive")
    return args


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def run(args: argparse.Namespace) -> int:
    start_time = time.perf_counter()
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = _device()
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32, None: None}[args.dtype]
    args.store_dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    template = json.loads(args.prompt_template.read_text()) if args.prompt_template else None
    encoders = ModelEncoders(args.model, device, args.store_dtype, args.max_sequence_length, template,
                             vae_tile=args.vae_tile)
    encoders.check_frames(args.frames, args.height, args.width)
    items = list_items(args.input)
    if not items:
        raise PrepareError(f"--input {args.input}: no video or image files")
    settings = {"input": str(args.input.resolve()), "items": len(items), "model": str(args.model.resolve()),
                **{k: getattr(args, k) for k in ("height", "width", "frames", "fps", "negative_prompt", "per_shard",
                                                 "max_sequence_length")},
                **({"vae_tile": args.vae_tile} if args.vae_tile else {}),  # absent: as recorded before it existed
                "dtype": str(args.store_dtype).removeprefix("torch."), "prompt_template": template}
    record = args.out / "prepare.json"
    if record.is_file() and json.loads(record.read_text()) != settings:
        raise PrepareError(f"--out {args.out}: prepared with other settings ({record}); use a new --out folder")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("gloo")
    args.out.mkdir(parents=True, exist_ok=True)

    def write_shared() -> None:
        """The settings record and the encoded negative prompt: rank 0 writes them, a failure ends every rank."""
        if not record.is_file():
            with atomic_destination(record, overwrite=True) as tmp:
                tmp.write_text(json.dumps(settings, indent=1) + "\n")
        negative = encoders.encode_negative(args.negative_prompt, args.height, args.width)
        write_negative(stored(negative, args.store_dtype), args.out)

    on_rank0(write_shared, share=False)
    shards = [(k, items[s:s + args.per_shard]) for k, s in enumerate(range(0, len(items), args.per_shard))]
    mine = [(k, chunk) for k, chunk in shards[rank::world] if not (args.out / f"shard-{k:05d}.jsonl").is_file()]
    with tqdm(total=sum(len(c) for _, c in mine), desc=f"pose-prepare rank {rank}", unit="clip",
              disable=None if rank == 0 else True) as bar:
        for k, chunk in mine:
            prepare_shard(encoders, chunk, k, k * args.per_shard, args, bar)
    if dist.is_initialized():
        dist.barrier()
    return on_rank0(lambda: finish(args.out, len(shards), len(items), time.perf_counter() - start_time))


def main(argv: list[str] | None = None) -> int:
    owns_group = not dist.is_initialized()
    try:
        return run(parse_args(argv))
    except (PrepareError, EncoderError) as e:
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"pose-prepare: error: {e}", file=sys.stderr)
        return 2
    finally:
        if owns_group and dist.is_initialized():
            dist.destroy_process_group()
