"""Each phase of a chained run (teacher -> Phase I -> Phase II in one process, as the trainer runs them) holds
what it needs and nothing an earlier phase left: at its first step every live tensor storage in the process
belongs to the phase's roles, its optimisers' gradient buffers, main weights and Adam states, or the batch,
apart from a few KiB (RNG states, the procedural data's colour and text tables). Phase I's fake-score DDP
buffers outlived Phase I (1.1 GiB per rank at 14B), and the teacher phase built a frozen base it never used."""

from __future__ import annotations

import gc

import torch

from pose_mcore.config.train import load_train_config
from pose_mcore.evaluation.memory_model import _tensors_of, bytes_by_name, phase_states
from pose_mcore.training.trainer import Trainer

RUN = ["preset=tiny-t2v", "tensor_parallel=1", "micro_batch_size=2", "data.size=16", "data.frames=3",
       "data.height=8", "data.width=8", "teacher.steps=1", "phase1.steps=1", "phase2.steps=1", "phase1.fake_updates=1",
       "phase1.lora_rank=4", "model.hidden_size=256", "model.num_attention_heads=4", "model.ffn_hidden_size=512"]
SMALL = 16 * 2**10
"""Bytes of a storage no phase holds that may be alive anyway (an RNG state is 5 KiB)."""


def _live_storages() -> dict[int, tuple[tuple[int, ...], int]]:
    gc.collect()
    return {o.untyped_storage()._cdata: (tuple(o.shape), o.untyped_storage().nbytes()) for o in gc.get_objects()
            if type(o) in (torch.Tensor, torch.nn.Parameter) and not o.is_meta}


def _census(roles, phase, batches, before: set[int]) -> dict:
    """What the phase holds by name, and every other storage alive that was not before the run (other tests'
    fixtures in this process are not the run's)."""
    named = {**phase_states(roles, phase), "batch": batches}
    known = {t.untyped_storage()._cdata for t in _tensors_of(list(named.values()))} | before
    others = [v for k, v in _live_storages().items() if k not in known]
    return {"held": dict(bytes_by_name(named)), "others": others}


def test_each_phase_holds_only_what_it_needs(tp1, tmp_path, monkeypatch):
    seen = {}
    before = set(_live_storages())
    build = Trainer._build

    def counted(self, name, teacher, previous):
        roles, phase = build(self, name, teacher, previous)
        step = phase.step

        def first_step(batches):
            if phase.steps_done == 0:
                seen[name] = _census(roles, phase, batches, before)
            return step(batches)

        phase.step = first_step
        return roles, phase

    monkeypatch.setattr(Trainer, "_build", counted)
    Trainer(load_train_config(None, [*RUN, f"output_dir={tmp_path}"])).run()
    assert list(seen) == ["teacher", "phase1", "phase2"]
    role_bytes = seen["teacher"]["held"]["generator"]
    assert role_bytes > 2**23  # a model large enough that a leftover role or buffer stands out
    for name, census in seen.items():
        large = [o for o in census["others"] if o[1] > SMALL]
        assert not large and sum(n for _, n in census["others"]) < 4 * SMALL, (name, census["others"])
    assert "base" not in seen["teacher"]["held"]  # the teacher phase trains the generator alone
    assert "grads fake" in seen["phase1"]["held"] and "grads fake" not in seen["phase2"]["held"]
