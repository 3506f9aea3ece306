"""Shared fixtures: a TP=1 parallel state in the test process, and a torchrun launcher for multi-rank tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

# Without a GPU the Triton kernels run under Triton's interpreter; it must be chosen before they are defined.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
import devices  # noqa: E402, F401 - fp32 without TF32 on a GPU

if torch.cuda.is_available():
    # deterministic mode, so that a resumed run repeats an uninterrupted one bit for bit (fp32 without TF32:
    # tests/devices.py)
    from pose_mcore.parallel.state import deterministic_mode

    deterministic_mode()

KERNEL_BACKEND = "triton" if torch.cuda.is_available() else "interpret"
"""The kernel backend of this machine; tests run it and the torch reference."""
DEVICE = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
"""Where the tests compute: the GPU when there is one (models, kernels), else the CPU."""


HEAVY = ("test_memory_model.py", "test_train_parallel.py", "test_resume_faults.py", "test_context_parallel.py",
         "test_model_parallel.py", "test_stopping.py", "test_device_placement.py", "test_checkpoint_reshard.py")
"""Test files whose set-up runs for minutes, longest first (2026-11-27 on 2 cores: 11 to 2.5 minutes)."""


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Collect the :data:`HEAVY` files first, longest first: ``make test`` hands files to its two processes in
    this order (``--no-loadscope-reorder``), so both start on the long ones instead of one finishing with
    them alone."""
    rank = {name: i for i, name in enumerate(HEAVY)}
    items.sort(key=lambda item: rank.get(item.path.name, len(HEAVY)))


@pytest.fixture(scope="session")
def tp1():
    """megatron-core parallel state with TP=1 on a single-rank gloo group."""
    from pose_mcore.parallel.state import initialize_parallel

    return initialize_parallel(1)


def rank_env(nproc: int, **extra: str) -> dict[str, str]:
    """The environment for ``nproc`` ranks on this machine: one GPU per rank when there are enough GPUs,
    else CPU ranks (gloo), with CUDA hidden from them."""
    env = dict(os.environ, **extra)
    if torch.cuda.device_count() < nproc:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def torchrun(script: str, *args: str, nproc: int = 2, timeout: int = 300) -> None:
    """Run ``tests/dist/<script>`` under torchrun with ``nproc`` ranks (see :func:`rank_env`); fail with its
    output if it fails."""
    env = rank_env(nproc, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           str(TESTS / "dist" / script), *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited with {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")


def torchrun_results(tmp_path_factory, script: str, *args: str) -> dict:
    """Run ``tests/dist/<script> --out FILE *args`` under torchrun and load what it saved."""
    out = tmp_path_factory.mktemp(Path(script).stem) / "results.pt"
    torchrun(script, "--out", str(out), *args)
    return torch.load(out, map_location=DEVICE)


def assert_close_rel(actual: torch.Tensor, expected: torch.Tensor, rel: float, name: str = "",
                     floor: float = 1e-6) -> None:
    """max |actual - expected| <= rel * max(max |expected|, floor): a relative tolerance on the tensor's
    scale. The floor covers tensors that are zero up to rounding (the gradient of a key bias, which
    softmax ignores, is ~1e-12): they are held to an absolute ``rel * floor``."""
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    actual = actual.to(expected.device)
    scale = expected.abs().max().clamp_min(floor)
    err = ((actual - expected).abs().max() / scale).item()
    assert err <= rel, f"{name}: max relative error {err:.3g} > {rel:g}"


def assert_grads_close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], rel: float,
                       what: str = "") -> None:
    """Every gradient of a model against the reference's, on its own scale, or on a thousandth of the
    model's largest gradient where its own is smaller. Gradients that are zero in exact arithmetic (a
    key bias under softmax, which ignores a shift shared by all keys) are rounding noise whose size
    depends on the CPU's instructions and thread count: they are held to an absolute bound of
    ``rel / 1000`` of the largest gradient instead of a relative error against noise."""
    assert set(actual) == set(expected), f"{what}: {sorted(set(actual) ^ set(expected))}"
    floor = 1e-3 * max(g.abs().max().item() for g in expected.values())
    for name, g in expected.items():
        assert_close_rel(actual[name], g, rel, f"{what}d/d {name}", floor=floor)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """Run the test at 1 and at 2 CPU threads (reductions round differently)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def assert_layout_matches(reference: dict[str, torch.Tensor], parallel: dict[str, torch.Tensor], label: str,
                          rel: float = 1e-5) -> None:
    """A parallel layout's outputs, input gradients and whole parameter gradients (tests/dist/model_tp.py)
    against the single-rank reference's."""
    assert set(parallel) == set(reference)
    assert sum(k.startswith("grad.") for k in reference) > 30
    assert any(k.startswith("input_grad.") for k in reference)
    for name, expected in reference.items():
        if not name.startswith("grad."):
            assert_close_rel(parallel[name], expected, rel, f"{label}/{name}")
    grads = {k: v for k, v in reference.items() if k.startswith("grad.")}  # on the model's scale, as in parity
    assert_grads_close({k: parallel[k] for k in grads}, grads, rel, f"{label}/")


@pytest.fixture(scope="session")
def model_folders(tmp_path_factory) -> dict[str, Path]:
    """Tiny diffusers model folders without a transformer (tests/encoder_fixtures.py), by kind, and
    ``"template:<kind>"``: the HunyuanVideo prompt-template JSON files for the tiny tokenizers."""
    import json

    from encoder_fixtures import HUNYUAN_I2V_TEMPLATE, HUNYUAN_TEMPLATE, KINDS, model_folder

    root = tmp_path_factory.mktemp("models")
    folders = {kind: model_folder(kind, root / kind) for kind in KINDS}
    for kind, template in (("hunyuan-t2v", HUNYUAN_TEMPLATE), ("hunyuan-i2v", HUNYUAN_I2V_TEMPLATE)):
        folders[f"template:{kind}"] = root / f"template-{kind}.json"
        folders[f"template:{kind}"].write_text(json.dumps(template))
    return folders
