"""The optional Weights & Biases logger (``wandb=true``), offline: the W&B run records the scalars of
``metrics.jsonl`` at the same global steps and the sample videos as media, and a resumed run (a requeued job)
continues the same W&B run id. The offline run files are read back with W&B's own record protobuf."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from test_training import SMALL

from pose_mcore.config.train import load_train_config
from pose_mcore.training.trainer import Trainer

wandb = pytest.importorskip("wandb")


def _records(path: Path) -> list[bytes]:
    """The records of a W&B transaction log (``run-<id>.wandb``: a 7-byte header, then LevelDB's log format:
    32 KiB blocks of chunks with a 7-byte header each: CRC, length, type full / first / middle / last)."""
    data, block, pos, out, partial = path.read_bytes(), 32768, 7, [], b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # zero padding to the block's end
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            out.append(chunk)
        elif kind == 2:
            partial = chunk
        elif kind == 3:
            partial += chunk
        elif kind == 4:
            out.append(partial + chunk)
    return out


def _history(folder: Path) -> tuple[set[str], dict[int, dict]]:
    """The run ids and the logged rows by step of every offline W&B run under ``folder``."""
    from wandb.proto import wandb_internal_pb2

    ids, rows = set(), {}
    for path in sorted(folder.glob("wandb/offline-run-*/run-*.wandb")):
        ids.add(path.stem.removeprefix("run-"))
        for raw in _records(path):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(raw)
            if record.WhichOneof("record_type") == "history":
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json)
                       for item in record.history.item}
                rows.setdefault(row["_step"], row)  # a step logged again after a resume is dropped by W&B
    return ids, rows


def test_offline_wandb_records_the_metrics_and_one_run_across_a_resume(tp1, tmp_path):
    out = tmp_path / "run"
    overrides = [*SMALL, f"output_dir={out}", "wandb=true", "wandb_mode=offline", "sample_every=2"]
    with pytest.raises(SystemExit, match="exit after 7 steps"):
        Trainer(load_train_config(None, overrides), exit_after=7).run()
    Trainer(load_train_config(None, overrides)).run(resume=True)
    ids, rows = _history(out)
    assert ids == {(out / "wandb_run_id").read_text().strip()}
    assert len(list(out.glob("wandb/offline-run-*"))) == 2  # two starts, one run
    metrics: dict[int, dict] = {}
    for line in (out / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        metrics.setdefault(r["global_step"], r)
    scalars = {step: {k: v for k, v in row.items() if not k.startswith(("_", "samples/"))} for step, row in rows.items()}
    want = {step: {f"{r['phase']}/{k}": v for k, v in r.items() if k not in ("phase", "step", "global_step")}
            for step, r in metrics.items()}
    assert {s: v for s, v in scalars.items() if v} == want
    media = {k.rsplit("/", 1)[0]: v for row in rows.values() for k, v in row.items()
             if k.startswith("samples/") and k.endswith("/_type")}
    assert {"samples/teacher-000002", "samples/phase1-final", "samples/phase2-final"} <= set(media)
    assert set(media.values()) == {"video-file"}
    stored = [p for p in out.glob("wandb/offline-run-*/files/media/videos/samples/*.gif")]
    assert len(stored) == len(media)
