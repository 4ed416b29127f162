"""Data goes where the user says (issue 12, section 5).

A named folder is stored absolute and is the only place looked in; a stored checkpoint
reads the same images from any working directory; ``eval --json`` says which folder and
how many images it used.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mgtool.archs import ArchSpec, resolve_spec
from mgtool.checkpoint import CheckpointMeta, save_checkpoint
from mgtool.cli import app
from mgtool.cli.data_options import data_config_from_cli
from mgtool.data import DataConfig, data_config, data_source, eval_batches, get_dataset
from mgtool.data.sources.synthetic import synthetic_arrays
from mgtool.errors import MgtoolError
from mgtool.provenance import new_provenance
from mgtool.templates import fresh_template_mixing

runner = CliRunner()


def _fake_fashion(folder: Path, test_size: int) -> Path:
    dataset = get_dataset("fashion-mnist")
    for split, n in (("train", 8), ("test", test_size)):
        dataset.write_arrays(folder, split, synthetic_arrays((1, 28, 28), 10, n, 0, split))  # type: ignore[attr-defined]
    return folder


@pytest.fixture
def system_dir(tmp_path, monkeypatch) -> Path:
    """A stand-in for /usr/share/datasets/fashion-mnist holding 7 test images."""
    folder = _fake_fashion(tmp_path / "system", test_size=7)
    monkeypatch.setattr(type(get_dataset("fashion-mnist")), "system_dirs", (folder,))
    monkeypatch.delenv("MGTOOL_DATA_DIR", raising=False)
    return folder


def test_a_relative_data_dir_is_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = data_config("fashion-mnist", "data")
    assert cfg.data_dir == str(tmp_path / "data")
    assert DataConfig.from_dict(cfg.to_dict()).data_dir == str(tmp_path / "data")
    assert data_config("synthetic").data_dir is None  # no folder named: the default search stays


def test_a_stored_config_reads_the_same_folder_from_any_directory(tmp_path, monkeypatch, system_dir):
    run = tmp_path / "run"
    _fake_fashion(run / "data", test_size=5)
    monkeypatch.chdir(run)
    stored = data_config("fashion-mnist", "data").to_dict()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    source = data_source(DataConfig.from_dict(stored), "test")
    assert source.path == str(run / "data") and source.images == 5


def test_a_named_folder_without_data_is_an_error_not_a_fallback(tmp_path, system_dir):
    missing = tmp_path / "typo"
    with pytest.raises(MgtoolError) as e:
        list(eval_batches(data_config("fashion-mnist", missing)))
    assert str(missing) in str(e.value) and "does not exist" in str(e.value)
    assert str(system_dir) not in str(e.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MgtoolError, match=str(empty)):
        data_source(data_config("fashion-mnist", empty), "test")


def test_without_a_named_folder_the_system_copy_is_found(tmp_path, monkeypatch, system_dir):
    monkeypatch.chdir(tmp_path)
    assert data_source(data_config("fashion-mnist"), "test").path == str(system_dir)


def test_cli_data_dir_overrides_the_stored_one_and_is_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stored = {"name": "fashion-mnist", "data_dir": "/stored", "options": {}}
    cfg = data_config_from_cli(None, Path("mine"), None, fallback=stored)
    assert cfg.data_dir == str(tmp_path / "mine")
    assert data_config_from_cli(None, None, None, fallback=stored).data_dir == "/stored"


# ------------------------------------------------------------------ eval --json


def _checkpoint(path: Path, data: dict | None) -> Path:
    spec = resolve_spec(ArchSpec("tiny-cnn", 1.0, 10, 1, {}))
    model = fresh_template_mixing(spec, seed=0)
    meta = CheckpointMeta("template-mixing", spec, model.plan, new_provenance(()), data=data)
    save_checkpoint(path, model.state_dict(), meta, force=False)
    return path


def test_eval_json_reports_the_data_path_and_image_count(tmp_path, monkeypatch, system_dir):
    run = tmp_path / "run"
    _fake_fashion(run / "data", test_size=6)
    monkeypatch.chdir(run)
    ckpt = _checkpoint(run / "net.safetensors", data_config("fashion-mnist", "data").to_dict())
    monkeypatch.chdir(tmp_path)  # another directory: same data
    result = runner.invoke(app, ["eval", str(ckpt), "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["data_path"] == str(run / "data") and report["images"] == report["samples"] == 6
    limited = json.loads(runner.invoke(app, ["eval", str(ckpt), "--device", "cpu", "--limit", "4", "--json"]).stdout)
    assert limited["images"] == 4
    synthetic = runner.invoke(app, ["eval", str(ckpt), "--device", "cpu", "--json", "--data", "synthetic",
                                    "--data-opt", "shape=1x28x28", "--data-opt", "test_size=9"])
    assert synthetic.exit_code == 0, synthetic.output
    assert json.loads(synthetic.stdout)["data_path"] is None and json.loads(synthetic.stdout)["images"] == 9


def test_eval_of_an_old_relative_checkpoint_does_not_fall_back(tmp_path, monkeypatch, system_dir):
    ckpt = _checkpoint(tmp_path / "old.safetensors", {"name": "fashion-mnist", "data_dir": "data", "options": {}})
    monkeypatch.chdir(tmp_path)  # ./data does not exist here
    result = runner.invoke(app, ["eval", str(ckpt), "--device", "cpu", "--json"])
    assert result.exit_code == 1 and result.stdout == ""
    assert str(tmp_path / "data") in result.stderr and "does not exist" in result.stderr
    missing = runner.invoke(app, ["eval", str(ckpt), "--device", "cpu", "--data-dir", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and str(tmp_path / "nope") in missing.stderr
