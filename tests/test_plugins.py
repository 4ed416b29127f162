"""A plugin is one file: a new family or data set dropped into its folder is registered, listed
by the CLI, covered by the generated tests and accepted by the architecture test, with no other
edit. Proved on a copy of the package in tmp_path, run in subprocesses (PYTHONPATH at the copy)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAMILY = '''"""A family dropped in by tests/test_plugins.py."""

from torch import nn

from mgtool.archs.registry import Family, register_family, scaled
from mgtool.archs.spec import ArchSpec


def _build(spec: ArchSpec) -> nn.Module:
    hidden = scaled(8, spec.width, "toy-net")
    return nn.Sequential(nn.Flatten(), nn.Linear(spec.in_chans * 36, hidden), nn.ReLU(),
                         nn.Linear(hidden, spec.num_classes))


register_family(Family(
    name="toy-net", build=_build, options={},
    grow=lambda s, g: ArchSpec(s.name, s.width * g, s.num_classes, s.in_chans, dict(s.options)),
    input_size=lambda spec: (6, 6), summary="a plugin test's family",
    tiny={"width": 1.0, "num_classes": 3, "in_chans": 1}))
'''

DATASET = '''"""A data set dropped in by tests/test_plugins.py."""

from mgtool.data.registry import Arrays, DatasetInfo, InMemoryDataset, check_split, register_dataset
from mgtool.data.sources.synthetic import synthetic_arrays


@register_dataset
class ToySet(InMemoryDataset):
    name = "toy-set"
    summary = "a plugin test's data set"
    mean, std = (0.5,), (0.25,)

    def info(self, cfg) -> DatasetInfo:
        return DatasetInfo(self.name, (1, 6, 6), 3, 12, 6, True)

    def arrays(self, cfg, split: str) -> Arrays:
        split = check_split(self.name, split)
        return synthetic_arrays((1, 6, 6), 3, 12 if split == "train" else 6, 0, split)
'''


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package, its tests and docs copied, with one new family file and one new data set file."""
    root = tmp_path_factory.mktemp("plugins")
    junk = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache")
    for folder in ("mgtool", "tests", "docs"):
        shutil.copytree(ROOT / folder, root / folder, ignore=junk)
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    (root / "mgtool" / "archs" / "families" / "toy_net.py").write_text(FAMILY)
    (root / "mgtool" / "data" / "sources" / "toy_set.py").write_text(DATASET)
    return root


def run(copy: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(copy), "COLUMNS": "200"}
    done = subprocess.run([sys.executable, *args], cwd=copy, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done


def test_the_new_files_are_registered_from_the_copy(copy: Path) -> None:
    code = ("import mgtool; from mgtool.archs import family_names; from mgtool.data import dataset_names; "
            "print(mgtool.__file__); print(' '.join(family_names())); print(' '.join(dataset_names()))")
    where, families, datasets = run(copy, "-c", code).stdout.splitlines()
    assert Path(where).is_relative_to(copy)
    assert "toy-net" in families.split() and "wrn" in families.split()
    assert "toy-set" in datasets.split() and "synthetic" in datasets.split()


def test_the_cli_lists_the_new_family(copy: Path) -> None:
    listed = json.loads(run(copy, "-m", "mgtool", "info", "--archs", "--json").stdout)
    assert "toy-net" in listed
    assert "toy-net" in run(copy, "-m", "mgtool", "info", "--archs").stderr


def test_the_generated_tests_cover_them_and_the_architecture_test_needs_no_row(copy: Path) -> None:
    collected = run(copy, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                    "tests/test_convert.py", "tests/test_datasets.py").stdout
    assert "[toy-net]" in collected and "[toy-set]" in collected
    assert "toy-net" not in (copy / "docs" / "ARCHITECTURE.md").read_text()
    run(copy, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_architecture.py",
        "tests/test_datasets.py", "-k", "architecture or toy-set")
