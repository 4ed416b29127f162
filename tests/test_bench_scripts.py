"""The benchmark scripts' own models and entry points (they are run on machines CI never sees)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import overhead  # noqa: E402


def test_overhead_references_compute_mgtools_function() -> None:
    models, _, size, _ = overhead.build_models("resnet18-0.5")
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = {name: model(x) for name, model in models.items()}
    assert set(logits) == {"plain", "mgtool", "einsum-before", "broadcast-ref"}
    for name in ("einsum-before", "broadcast-ref"):
        assert_close(logits[name], logits["mgtool"], rtol=1e-4, atol=1e-5)


def test_overhead_train_step_runs_for_every_model() -> None:
    models, _, size, _ = overhead.build_models("resnet18-0.5")
    x, y = torch.randn(2, 3, size, size), torch.tensor([0, 1])
    for model in models.values():
        overhead.train_step(model, x, y, {})()


# ---------------------------------------------------------------------- the library API bench uses

BENCH = Path(__file__).resolve().parents[1] / "bench"
PUBLIC_PACKAGES = ("mgtool.archs", "mgtool.data", "mgtool.train", "mgtool.fuse")
# What a script may reach past the public API for, and why.
INTERNAL = {
    "overhead.py": {"mgtool.mixing"},  # it times the mixing kernel itself
    "gpu_profile.py": {"mgtool.mixing"},  # it profiles the mixing kernel's reduction chunking
    # bench/growth_table.py is in the orchestration layer (docs/ARCHITECTURE.md): the runner's ledger
    "growth_table.py": {"mgtool.checkpoint", "mgtool.run_summary", "mgtool.runner", "mgtool.analysis.plot"},
    "reproduction_sweep.py": {"mgtool.analysis.plot"},
    "demo_defaults.py": {"mgtool.demo"},  # it measures the demo's defaults on the demo's data
    "demo_seeds.py": {"mgtool.demo"},  # it runs the demo itself, seed by seed
}


def _bench_imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) for every mgtool import in a script (name None for ``import mgtool.x``)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "mgtool":
            found += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, None) for a in node.names if a.name.split(".")[0] == "mgtool"]
    return found


@pytest.mark.parametrize("path", sorted(BENCH.glob("*.py")), ids=lambda p: p.name)
def test_bench_uses_the_public_api_without_sys_path_edits(path: Path) -> None:
    import importlib

    import mgtool

    assert "sys.path" not in path.read_text(), f"{path.name}: run it with mgtool installed or on PYTHONPATH"
    for module, name in _bench_imports(path):
        if module == "mgtool":
            assert name is None or name in mgtool.__all__, f"{path.name}: mgtool.{name} is not public"
        elif module in PUBLIC_PACKAGES:
            assert name in importlib.import_module(module).__all__, f"{path.name}: {module}.{name} is not public"
        else:
            assert module in INTERNAL.get(path.name, set()), f"{path.name} imports the internal {module}"


@pytest.mark.parametrize("script", ["growth_table.py", "reproduction_sweep.py", "stability.py", "vit_growth.py"])
def test_bench_scripts_start_from_any_folder(script: str, tmp_path: Path) -> None:
    """No sys.path edit: ``python bench/X.py`` finds its sibling modules (the script's folder) and
    mgtool (installed, or on PYTHONPATH)."""
    env = {**os.environ, "PYTHONPATH": str(BENCH.parent)}
    done = subprocess.run([sys.executable, str(BENCH / script), "--help"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()
