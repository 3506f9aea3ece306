#!/usr/bin/env python
"""Peak memory of checkpoint conversion against checkpoint size.

Generates (streaming, tensor by tensor) a Wan-shaped checkpoint in the official layout of at least
``--gb`` GB, then runs ``pose-convert import`` and ``export`` on it in child processes and prints
each one's peak resident memory divided by the checkpoint size. Streaming conversion keeps that
ratio well under 0.5 (the peak is about the interpreter plus the largest tensor group).

    python tools/bench_convert.py              # 2 GB checkpoint under a temporary folder
    python tools/bench_convert.py --gb 4 --workdir /scratch
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from pose_mcore.notices import quiet_third_party_warnings

quiet_third_party_warnings()  # before megatron-core is imported: it warns at import

from pose_mcore.checkpoint.io import SafetensorsStreamWriter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def wan_official_shapes(hidden: int, ffn: int, layers: int, text_dim: int = 4096, freq_dim: int = 256,
                        in_ch: int = 16) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes of an official-layout Wan T2V checkpoint."""
    shapes = [("patch_embedding.weight", (hidden, in_ch, 1, 2, 2)), ("patch_embedding.bias", (hidden,)),
              ("text_embedding.0.weight", (hidden, text_dim)), ("text_embedding.0.bias", (hidden,)),
              ("text_embedding.2.weight", (hidden, hidden)), ("text_embedding.2.bias", (hidden,)),
              ("time_embedding.0.weight", (hidden, freq_dim)), ("time_embedding.0.bias", (hidden,)),
              ("time_embedding.2.weight", (hidden, hidden)), ("time_embedding.2.bias", (hidden,)),
              ("time_projection.1.weight", (6 * hidden, hidden)), ("time_projection.1.bias", (6 * hidden,)),
              ("head.head.weight", (4 * in_ch, hidden)), ("head.head.bias", (4 * in_ch,)),
              ("head.modulation", (1, 2, hidden))]
    for i in range(layers):
        b = f"blocks.{i}."
        for attn in ("self_attn", "cross_attn"):
            for p in "qkvo":
                shapes += [(f"{b}{attn}.{p}.weight", (hidden, hidden)), (f"{b}{attn}.{p}.bias", (hidden,))]
            shapes += [(f"{b}{attn}.norm_q.weight", (hidden,)), (f"{b}{attn}.norm_k.weight", (hidden,))]
        shapes += [(f"{b}norm3.weight", (hidden,)), (f"{b}norm3.bias", (hidden,)),
                   (f"{b}ffn.0.weight", (ffn, hidden)), (f"{b}ffn.0.bias", (ffn,)),
                   (f"{b}ffn.2.weight", (hidden, ffn)), (f"{b}ffn.2.bias", (hidden,)),
                   (f"{b}modulation", (1, 6, hidden))]
    return shapes


# Runs a script in this interpreter and reports the process's own peak resident memory at exit.
_MEASURED = ("import resource, runpy, sys; sys.argv = sys.argv[1:]\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\n"
             "finally:\n    print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)")


def peak_rss_of(cmd: list[str]) -> tuple[float, float]:
    """(peak RSS in bytes, seconds) of one run of a Python script ``cmd = [script, args...]``."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _MEASURED, *cmd], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    kb = int(proc.stderr.rsplit("PEAK_RSS_KB", 1)[1].split()[0])
    return kb * 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=2.0, help="checkpoint size to generate")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    hidden, ffn = 2048, 8192
    per_layer = 8 * hidden * hidden + 2 * hidden * ffn
    layers = max(1, int(args.gb * 2**30 / 4 / per_layer) + 1)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        src = tmp / "wan_official.safetensors"
        shapes = wan_official_shapes(hidden, ffn, layers)
        writer = SafetensorsStreamWriter(src, [(n, torch.float32, s) for n, s in shapes])
        gen = torch.Generator().manual_seed(0)
        for name, shape in shapes:
            writer.write(name, torch.randn(shape, generator=gen) * 0.02)
        writer.close()
        size = src.stat().st_size
        print(f"checkpoint: {size / 2**30:.2f} GiB, Wan layout, hidden {hidden}, ffn {ffn}, {layers} blocks")
        tool = [str(ROOT / "tools" / "convert_checkpoint.py")]
        rss, secs = peak_rss_of(tool + ["import", "--src", str(src), "--dst", str(tmp / "pose"),
                                        "--set", "num_attention_heads=16"])
        print(f"import: peak RSS {rss / 2**30:.2f} GiB = {rss / size:.3f} x checkpoint size, {secs:.1f} s")
        src.unlink()
        rss, secs = peak_rss_of(tool + ["export", "--src", str(tmp / "pose"), "--dst", str(tmp / "wan"),
                                        "--layout", "wan"])
        print(f"export: peak RSS {rss / 2**30:.2f} GiB = {rss / size:.3f} x checkpoint size, {secs:.1f} s")


if __name__ == "__main__":
    main()
