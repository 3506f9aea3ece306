"""``pose-convert``: import, export (full weights, fp8, LoRA) and inspect checkpoints from the command line.

Every failure is one message naming the file, key or value, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from pose_mcore.checkpoint import convert as convert_module
from pose_mcore.checkpoint.convert import (
    DTYPES,
    LAYOUTS,
    export_checkpoint,
    import_checkpoint,
    inspect_checkpoint,
    parse_overrides,
)
from pose_mcore.checkpoint.io import CheckpointError
from pose_mcore.checkpoint.lora_export import KEY_STYLES, export_lora, parse_rank
from pose_mcore.models.registry import FAMILIES


def _parse_size(text: str) -> int:
    units = {"k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    t = text.strip().lower().removesuffix("b")
    try:
        return int(float(t[:-1]) * units[t[-1]]) if t and t[-1] in units else int(t)
    except ValueError as e:
        raise CheckpointError(f"--shard-size {text!r}: expected a size such as 2GB or 500MB") from e


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pose-convert", description=convert_module.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="architecture field the files do not state (e.g. num_attention_heads=40)")
    common.add_argument("--container", default=None,
                        help="entry of a torch checkpoint that holds the weights (HunyuanVideo: module or ema)")
    io = argparse.ArgumentParser(add_help=False)
    io.add_argument("--src", type=Path, required=True)
    io.add_argument("--dst", type=Path, required=True)
    io.add_argument("--shard-size", default="2GB")
    io.add_argument("--overwrite", action="store_true")
    imp = sub.add_parser("import", parents=[common, io], help="any supported layout (fp8 files too) -> pose_mcore")
    imp.add_argument("--dtype", choices=list(DTYPES), default="keep")
    imp.add_argument("--family", choices=sorted(FAMILIES), default=None)
    imp.add_argument("--tp", type=int, default=None, help="also check that the model splits over this many TP ranks")
    exp = sub.add_parser("export", parents=[io], help="pose_mcore -> " + " | ".join([*LAYOUTS, "lora"]))
    exp.add_argument("--layout", choices=[*LAYOUTS, "lora"], required=True,
                     help="lora: the generator (--src) as a LoRA against its teacher (--base), one .safetensors file")
    exp.add_argument("--dtype", choices=[*DTYPES, "fp8"], default="keep",
                     help="fp8: official layouts only, one .safetensors file, block linear weights in e4m3fn with a "
                          "per-tensor scale (ComfyUI's scaled fp8), the rest bf16")
    exp.add_argument("--base", type=Path, default=None, help="lora: the teacher checkpoint the run started from")
    exp.add_argument("--rank", default=None, help="lora: rank of every linear's factors, or 'full' (exact)")
    exp.add_argument("--lora-keys", choices=list(KEY_STYLES), default="official",
                     help="lora: official (diffusion_model.*, ComfyUI; diffusers converts it) or diffusers "
                          "(transformer.*, peft)")
    exp.add_argument("--device", default="cpu", help="lora: where the SVDs run (e.g. cuda)")
    exp.add_argument("--expert", choices=["high", "low"], default="high",
                     help="lora against a two-expert teacher (Wan2.2-A14B): the expert the generator started from "
                          "(generator_init)")
    ins = sub.add_parser("inspect", parents=[common], help="print what a checkpoint is")
    ins.add_argument("path", type=Path)
    ins.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``pose-convert``: exit 0 on success, 2 with one message naming the file, key or value otherwise."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "import":
            found = import_checkpoint(args.src, args.dst, args.family, args.dtype, parse_overrides(args.overrides),
                                      args.overwrite, _parse_size(args.shard_size), args.container, args.tp)
            print(f"found {found.family} ({found.variant}) in the {found.layout} layout at {args.src}")
            for note in found.notes:
                print(f"  note: {note}")
            print(f"wrote {args.dst}")
        elif args.command == "export" and args.layout == "lora":
            if args.base is None or args.rank is None:
                raise CheckpointError("export --layout lora needs --base (the teacher checkpoint), --rank (N or full)")
            if args.dtype == "fp8":
                raise CheckpointError("--dtype fp8 is for full weights; a LoRA is written in fp32, bf16 or fp16")
            report = export_lora(args.src, args.base, args.dst, parse_rank(args.rank), args.lora_keys,
                                 DTYPES[args.dtype], args.overwrite, args.device, args.expert)
            print("\n".join(report.summary()))
            print(f"wrote a rank-{report.rank} LoRA ({args.lora_keys} keys) to {args.dst}")
        elif args.command == "export":
            found = export_checkpoint(args.src, args.dst, args.layout, args.dtype, args.overwrite,
                                      _parse_size(args.shard_size))
            print(f"wrote {found.family} ({found.variant}) in the {args.layout} layout to {args.dst}")
        else:
            info = inspect_checkpoint(args.path, parse_overrides(args.overrides), args.container)
            if args.json:
                print(json.dumps(info, indent=2))
            else:
                for key in ("path", "family", "variant", "layout", "experts", "parameters", "tensors", "dtypes",
                            "unplaced_keys", "missing_keys", "notes"):
                    value = f"{info[key]:,}" if key == "parameters" else info[key]
                    print(f"{key:>14}: {value}")
    except CheckpointError as e:
        print(f"pose-convert: error: {e}", file=sys.stderr)
        return 2
    return 0
