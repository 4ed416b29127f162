"""Issue 28, item 5: data sets are inputs; nothing mgtool writes may land in a folder it reads data from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from mgtool.cli import app
from mgtool.data import Arrays, data_config, get_dataset
from mgtool.errors import MgtoolError
from mgtool.subset import write_subset

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "fashion-mnist-cpu.yaml"


def _fashion(folder: Path) -> dict[str, bytes]:
    g = torch.Generator().manual_seed(0)
    dataset = get_dataset("fashion-mnist")
    for split, n in (("train", 96), ("test", 48)):
        images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
        dataset.write_arrays(folder, split, Arrays(images, torch.randint(0, 10, (n,), generator=g)))
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_run_with_output_at_the_data_root_never_replaces_the_source(tmp_path, monkeypatch):
    before = _fashion(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MGTOOL_DATA_DIR", raising=False)
    r = CliRunner().invoke(app, ["run", str(RECIPE), "-o", ".", "--force", "--set", "data.subset.train=64",
                                 "--set", "data.subset.test=32"])
    assert r.exit_code == 1, r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "where fashion-mnist is read from" in lines[0], r.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir()} == before


@pytest.mark.parametrize("where", ["same", "inside", "around"])
def test_write_subset_refuses_folders_overlapping_the_source(tmp_path, where):
    src = tmp_path / "d" / "fm"
    before = _fashion(src)
    target = {"same": src, "inside": src / "sub", "around": tmp_path / "d"}[where]
    with pytest.raises(MgtoolError, match="replace its files"):
        write_subset(data_config("fashion-mnist", src), target, train_size=8, test_size=8)
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    write_subset(data_config("fashion-mnist", src), tmp_path / "elsewhere", train_size=8, test_size=8)
