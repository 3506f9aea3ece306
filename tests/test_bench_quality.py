"""The quality benchmark runs in --quick mode, writes its files, and gives the same numbers twice."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(out: Path) -> list[dict]:
    env = dict(os.environ)
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_quality.py"), "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in ("quality.md", "quality.json", "quality_vs_latency.png", "samples/pose_1_step.gif"):
        assert (out / name).is_file(), name
    return json.loads((out / "quality.json").read_text())


@pytest.mark.slow
def test_quick_benchmark_is_reproducible(tmp_path):
    first, second = _run(tmp_path / "a"), _run(tmp_path / "b")
    assert [r["row"] for r in first] == [r["row"] for r in second] and len(first) == 10
    for a, b in zip(first, second, strict=True):
        assert {k: v for k, v in a.items() if k != "latency_ms"} == {k: v for k, v in b.items() if k != "latency_ms"}
    table = (tmp_path / "a" / "quality.md").read_text()
    assert "POSE 1 step beats teacher 1 NFE" in table
