"""The wheel holds what the code opens, declares every third-party package the code imports (and nothing it
does not), and a non-editable install runs ``pose-train`` with its shipped config from anywhere."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEST_ONLY = {"pytest", "ruff"}  # the `test` extra
OPTIONAL = {"transformer_engine", "flash_attn", "triton", "wandb"}  # the `gpu` and `wandb` extras, imported when used
NEEDS = {"torch.utils.tensorboard": ("tensorboard",),  # modules that need another distribution, undeclared by theirs
         "diffusers": ("accelerate", "ftfy")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("pose_mcore-*.whl")
    return path


def _imports(source: str) -> set[str]:
    """Imported module names, whole (``torch.utils.tensorboard``)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_wheel_holds_configs_kernels_and_entry_points(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    for config in ("tiny-cpu", "tiny-cpu-tp2", "wan2.1-i2v-14b", "hunyuan-i2v-13b", "wan2.2-t2v-a14b", "wan2.2-i2v-a14b",
                   "hunyuan1.5-t2v-480p", "hunyuan1.5-i2v-720p"):
        assert f"pose_mcore/configs/{config}.yaml" in names
    assert {"pose_kernels/st_r1.py", "pose_kernels/logit_query_attention.py", "pose_mcore/cli.py"} <= names
    for entry in ("pose-train = pose_mcore.cli:main", "pose-convert = pose_mcore.cli:convert",
                  "pose-prepare = pose_mcore.data.prepare:main", "pose-sample = pose_mcore.inference.sample:main"):
        assert entry in entry_points


def test_declared_dependencies_are_the_imported_ones(wheel):
    with zipfile.ZipFile(wheel) as z:
        imported = set().union(*(_imports(z.read(n).decode()) for n in z.namelist() if n.endswith(".py")))
        metadata = next(z.read(n).decode() for n in z.namelist() if n.endswith("METADATA"))
    top = {m.split(".")[0] for m in imported}
    third_party = {m for m in top if m not in sys.stdlib_module_names and m not in ("pose_mcore", "pose_kernels")}
    required = {re.split(r"[<>=!\[ ;]", line.split(": ", 1)[1])[0].lower()
                for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line}
    distributions = importlib.metadata.packages_distributions()
    needed = {distributions[m][0].lower() for m in third_party - OPTIONAL}
    needed |= {dist for module, dists in NEEDS.items() if module in imported for dist in dists}
    assert not third_party & TEST_ONLY, "the package imports a test-only module"
    assert needed == required, f"imported but not declared: {needed - required}; declared, never imported: " \
                               f"{required - needed}"


def test_installed_wheel_runs_pose_train_with_its_shipped_config(wheel, tmp_path):
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = dict(os.environ, PYTHONPATH=str(target))
    for key in ("WORLD_SIZE", "RANK"):
        env.pop(key, None)
    where = subprocess.run([sys.executable, "-c", "import pose_mcore.cli; print(pose_mcore.cli.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=120)
    assert where.stdout.strip().startswith(str(target)), where.stdout + where.stderr
    run = [sys.executable, "-m", "pose_mcore.cli", "--validate"]
    (tmp_path / "ckpt" / "wan2.1-i2v-14b").mkdir(parents=True)  # the paths the shipped 14B config names
    (tmp_path / "ckpt" / "wan2.1-i2v-14b" / "config.json").write_text("{}")
    (tmp_path / "data" / "wan_i2v_latents").mkdir(parents=True)
    (tmp_path / "data" / "wan_i2v_latents" / "manifest.jsonl").write_text("")
    proc = subprocess.run([*run, "--config", "wan2.1-i2v-14b"], cwd=tmp_path, env={**env, "WORLD_SIZE": "8"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([*run, "--config", "no-such-config"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    shipped = ("hunyuan-i2v-13b, hunyuan1.5-i2v-720p, hunyuan1.5-t2v-480p, tiny-cpu, tiny-cpu-tp2, wan2.1-i2v-14b, "
               "wan2.2-i2v-a14b, wan2.2-t2v-a14b")
    assert proc.returncode == 2 and f"shipped: {shipped}" in proc.stderr
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "pose_mcore.cli", "phases=[teacher]", "teacher.steps=2", "tensor_parallel=1",
                           "data.frames=3", "data.height=8", "data.width=8", f"output_dir={out}"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "generator" / "config.json").is_file()
