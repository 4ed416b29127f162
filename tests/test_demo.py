"""``mgtool demo``: the quick variant end to end, the data search and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mgtool import demo
from mgtool.checkpoint import read_meta
from mgtool.cli import app
from mgtool.demo import demo_recipe, find_fashion_mnist
from mgtool.errors import MgtoolError

runner = CliRunner()
ROWS = ["net1", "net2", "grown", "grown_bn", "final", "match"]


def _real_data() -> Path | None:
    try:
        return find_fashion_mnist(None, download=False)
    except MgtoolError:
        return None


def check_summary(summary: dict) -> None:
    rows = {r["stage"]: r for r in summary["rows"]}
    assert list(rows) == ROWS
    assert all(0.0 <= r["top1"] <= 1.0 for r in rows.values())
    assert rows["grown"]["arch"] == "wrn x0.5" and rows["net1"]["arch"] == "wrn x0.25"
    # The large net from scratch gets the FLOPs the growth was charged (to within a few training steps).
    assert rows["match"]["flops_norm"] == pytest.approx(rows["final"]["flops_norm"], rel=0.15)
    # Accuracy at growth, as fused and with BatchNorm recalibrated, and per epoch after it.
    assert summary["at_growth"]["fused_top1"] == rows["grown"]["top1"]
    assert summary["at_growth"]["recalibrated_top1"] == rows["grown_bn"]["top1"]
    assert summary["at_growth"]["recalibration_samples"] == 384  # the quick demo's whole training subset
    epochs = summary["after_growth"]
    assert epochs and [e["epoch"] for e in epochs][-1] == 1 and all(0.0 <= e["test_top1"] <= 1.0 for e in epochs)
    assert all(set(e) == {"epoch", "test_top1", "lr", "flops_norm"} for e in epochs)
    # The large baseline is a complete schedule: its last epoch ends at lr_min (0), not mid-cosine.
    out = Path(summary["out_dir"])
    match = read_meta(out / "large-match.safetensors").training
    assert match["complete"] and match["recipe"]["stop_at"] == 1 and match["recipe"]["lr_min"] == 0.0
    last = json.loads((out / "large-match.metrics.jsonl").read_text().splitlines()[-1])
    assert last["lr"] == 0.0


def test_demo_quick_on_synthetic_stand_in(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--quick", "--data", "synthetic", "--threads", "1", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    check_summary(summary)
    assert summary["data"]["name"] == "synthetic"
    assert "accuracy and training FLOPs per stage" in result.stderr
    again = runner.invoke(app, ["demo", "--quick", "--data", "synthetic", "-o", str(out)])
    assert again.exit_code == 0 and again.stdout.strip() == str(out / "summary.json")
    assert "0 stage(s) ran" in again.stderr


@pytest.mark.skipif(_real_data() is None,
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_demo_quick_on_real_fashion_mnist(tmp_path: Path) -> None:
    result = runner.invoke(app, ["demo", "--quick", "--threads", "1", "-o", str(tmp_path / "demo"), "--json",
                                 "--no-download"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    check_summary(summary)
    assert summary["data"]["name"] == "fashion-mnist"
    assert (tmp_path / "demo" / "data" / "train-images-idx3-ubyte.gz").exists()


def test_missing_data_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(app, ["demo", "--quick", "--data-dir", str(empty), "-o", str(tmp_path / "d")])
    assert result.exit_code == 1 and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(empty) in lines[0] and "apt-get install dataset-fashion-mnist" in lines[0]
    assert not (tmp_path / "d").exists()
    # Without --data-dir: the system folders, then ./data ($MGTOOL_DATA_DIR), then (here: not) a download.
    monkeypatch.setenv("MGTOOL_DATA_DIR", str(empty))
    with pytest.raises(MgtoolError, match="Fashion-MNIST not found") as e:
        find_fashion_mnist(None, system_dirs=(tmp_path / "nowhere",), download=False)
    assert str(empty) in str(e.value) and "nowhere" in str(e.value)


def test_data_dir_layouts_are_found(tmp_path: Path) -> None:
    real = _real_data()
    if real is None:
        pytest.skip("needs the idx files")
    nested = tmp_path / "FashionMNIST" / "raw"
    nested.mkdir(parents=True)
    for p in real.iterdir():
        (nested / p.name).symlink_to(p)
    assert find_fashion_mnist(tmp_path, download=False) == nested


def test_demo_help_and_bad_choice() -> None:
    result = runner.invoke(app, ["demo", "--help"])
    assert result.exit_code == 0 and "Example: mgtool demo" in result.output
    result = runner.invoke(app, ["demo", "--quick", "--data", "cifar10"])
    assert result.exit_code == 2 and "--data must be one of" in result.stderr
    with pytest.raises(MgtoolError):
        demo_recipe(quick=True, data="mnist", folder=None)


def test_the_demo_growth_settings_are_one_constant_each(monkeypatch: pytest.MonkeyPatch) -> None:
    r = demo_recipe(quick=True, data="synthetic", folder=None)
    assert (r.fuse.init, r.fuse.init_scale, r.fuse.init_norm, r.finetune.train.protocol, r.recalibrate.samples) == (
        demo.INIT, None, None, demo.PROTOCOL, demo.RECALIBRATION_SAMPLES)  # fuse's default rule: capped
    monkeypatch.setattr(demo, "PROTOCOL", "authors")
    monkeypatch.setattr(demo, "RECALIBRATION_SAMPLES", 0)
    monkeypatch.setattr(demo, "FINETUNE_EPOCHS", 3)
    r = demo_recipe(quick=False, data="synthetic", folder=None)
    assert (r.finetune.train.protocol, r.recalibrate.samples, r.finetune.train.epochs) == ("authors", 0, 3)


def test_the_demo_seed_reaches_every_random_choice() -> None:
    r0 = demo_recipe(quick=False, data="fashion-mnist", folder=Path("/nonexistent"), seed=0)
    r3 = demo_recipe(quick=False, data="fashion-mnist", folder=Path("/nonexistent"), seed=3)
    assert r0.data.subset.seed == 0 and r3.data.subset.seed == 3
    assert (r3.net1.seed, r3.fuse.seed, r3.finetune.seed, r3.reference.seed) == (3, 3, 3, 3)
    assert demo_recipe(quick=True, data="synthetic", folder=None, seed=4).data.options["seed"] == 4
    r = demo_recipe(quick=True, data="synthetic", folder=None, overrides=["finetune.train.epochs=2"])
    assert r.finetune.train.epochs == 2
