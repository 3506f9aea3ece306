"""Saving a training checkpoint or exporting a model never gathers a whole role (a 14B role is ~65 GB in
fp32): a checkpoint is written by every rank from the tensors it holds, an export gathers whole tensors one at
a time and streams them into the file by rank 0. Loading reads each rank's slices only, and gives the same
weights back."""

from __future__ import annotations

import torch

from pose_mcore.checkpoint.load import load_model
from pose_mcore.config.wan import wan_config
from pose_mcore.evaluation.memory_model import LiveBytes
from pose_mcore.models.wan import WanModel
from pose_mcore.parallel.state import run_device
from pose_mcore.training.checkpointing import export_pose_checkpoint, load_checkpoint, save_checkpoint


def _model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return WanModel(wan_config("tiny-i2v", num_layers=6)).to(run_device())


def test_save_and_export_hold_one_whole_tensor_at_a_time(tp1, tmp_path):
    model = _model(0)
    state = {k: v for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}  # not megatron's extra state
    tensors = list(state.values())
    biggest = max(t.numel() * t.element_size() for t in tensors)
    role = sum(t.numel() * t.element_size() for t in tensors)
    assert role > 10 * biggest  # a role is many tensors: holding it whole would show
    with LiveBytes([]) as live:
        save_checkpoint(tmp_path / "checkpoints", {"global_step": 3, "phase": "phase2", "step": 3},
                        {"generator": model, "ema": model}, [])
    assert live.peak.step <= biggest, (live.peak.step, biggest, role)  # at most a copy of one tensor
    with LiveBytes([]) as live:
        export_pose_checkpoint(model, tmp_path / "generator")
    assert 0 < live.peak.step <= 2 * biggest, (live.peak.step, biggest, role)

    other = _model(1)
    meta, _ = load_checkpoint(tmp_path / "checkpoints" / "step-00000003", {"generator": other})
    assert meta["phase"] == "phase2"
    exported = load_model(tmp_path / "generator")
    for name, want in state.items():
        assert torch.equal(other.state_dict()[name], want), name
        assert torch.equal(exported.state_dict()[name].to(want.device), want), name
