"""``mgtool run`` end to end on synthetic data: files, FLOPs accounting, skip, rerun, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from typer.testing import CliRunner

from mgtool.archs import ArchSpec, build_plain, grow_spec, resolve_spec
from mgtool.budget import samples_per_epoch
from mgtool.checkpoint import read_meta
from mgtool.cli import app
from mgtool.flops import flops_per_training_sample
from mgtool.provenance import sha256_file

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "synthetic-smoke.yaml"
STAGE_FILES = ("net1.safetensors", "net2.safetensors", "grown.safetensors", "grown.bn.safetensors",
               "finetuned.safetensors", "final.safetensors", "large-match.safetensors", "eval.json", "summary.json",
               "pipeline.json", "recipe.resolved.yaml")
runner = CliRunner()


RECALIBRATE = ["--set", "recalibrate.samples=2048"]  # off by default; the smoke runs here recalibrate


def run(args: list[str]) -> dict:
    """``mgtool run RECIPE ...`` with BatchNorm recalibration on (a later --set may turn it off)."""
    result = runner.invoke(app, ["run", args[0], *RECALIBRATE, *args[1:], "--json", "-q"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def statuses(summary: dict) -> dict[str, str]:
    return {s["name"]: s["status"] for s in summary["stages"]}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("smoke") / "run"
    return out, run([str(SMOKE), "-o", str(out)])


def test_every_stage_writes_its_file_and_the_summary(smoke: tuple[Path, dict]) -> None:
    out, summary = smoke
    for name in STAGE_FILES:
        assert (out / name).exists(), name
    assert statuses(summary) == {s: "ran" for s in ("net1", "net2", "fuse", "recalibrate", "finetune", "export",
                                                   "match", "eval")}
    assert json.loads((out / "summary.json").read_text()) == summary
    resolved = (out / "recipe.resolved.yaml").read_text()
    assert resolved.startswith("# mgtool run ")
    assert yaml.safe_load(resolved)["name"] == "synthetic-smoke"
    assert read_meta(out / "final.safetensors").kind == "plain"
    assert [r["stage"] for r in summary["rows"]] == ["net1", "net2", "grown", "grown_bn", "final", "match"]
    assert all(0.0 <= r["top1"] <= 1.0 for r in summary["rows"])


def test_flops_norm_charges_net2_and_finetune_but_not_net1(smoke: tuple[Path, dict]) -> None:
    out, summary = smoke
    rows = {r["stage"]: r for r in summary["rows"]}
    net1, net2 = read_meta(out / "net1.safetensors"), read_meta(out / "net2.safetensors")
    grown, tuned = read_meta(out / "grown.safetensors"), read_meta(out / "finetuned.safetensors")
    assert rows["net1"]["flops_charged"] == 0.0 and rows["net1"]["flops_spent"] == net1.flops.training > 0
    assert rows["net2"]["flops_charged"] == net2.flops.training > 0
    assert rows["grown"]["flops_spent"] == 0.0
    assert grown.flops.given == net1.flops.training
    ft_spent = tuned.training["flops_spent"]
    recal = read_meta(out / "grown.bn.safetensors")
    recal_spent = recal.flops.training - grown.flops.training
    assert recal_spent > 0 and recal.flops.given == grown.flops.given
    torch.testing.assert_close(rows["grown_bn"]["flops_spent"], recal_spent, rtol=1e-12, atol=0)
    torch.testing.assert_close(rows["final"]["flops_charged"], net2.flops.training + recal_spent + ft_spent,
                               rtol=1e-12, atol=0)
    # The reference is the large plain net for the recipe's full schedule, counted independently here.
    recipe = yaml.safe_load(SMOKE.read_text())
    small = resolve_spec(ArchSpec("tiny-cnn", 0.5, 4, 1, {}))
    with torch.device("cpu"):
        large = build_plain(grow_spec(small, 2))
    batch = recipe["finetune"]["train"]["batch_size"]
    per_sample = flops_per_training_sample(large, (1, 8, 8), batch)
    reference = per_sample * samples_per_epoch(128, batch) * recipe["reference"]["epochs"]
    torch.testing.assert_close(summary["reference_flops"], reference, rtol=1e-9, atol=0)
    torch.testing.assert_close(rows["final"]["flops_norm"], rows["final"]["flops_charged"] / reference,
                               rtol=1e-12, atol=0)
    # Large Match spends the growth's FLOPs, to within one training step of the large net.
    step = flops_per_training_sample(large, (1, 8, 8), batch) * batch
    assert abs(rows["match"]["flops_charged"] - rows["final"]["flops_charged"]) <= step


def test_rerun_skips_every_stage_and_changes_nothing(smoke: tuple[Path, dict]) -> None:
    out, _ = smoke
    before = {n: sha256_file(out / n) for n in STAGE_FILES[:8]}
    summary = run([str(SMOKE), "-o", str(out)])
    assert set(statuses(summary).values()) == {"skipped"}
    assert {n: sha256_file(out / n) for n in STAGE_FILES[:8]} == before


def test_changed_setting_reruns_only_what_depends_on_it(tmp_path: Path, smoke: tuple[Path, dict]) -> None:
    src, _ = smoke
    out = tmp_path / "run"
    out.mkdir()
    for name in STAGE_FILES:  # a copy of the finished run
        (out / name).write_bytes((src / name).read_bytes())
    for p in src.glob("*.metrics.jsonl"):
        (out / p.name).write_bytes(p.read_bytes())
    summary = run([str(SMOKE), "-o", str(out), "--set", "finetune.train.lr=0.05"])
    # Large Match trains from scratch on net 1's recipe: the fine-tune's lr does not touch it.
    assert statuses(summary) == {"net1": "skipped", "net2": "skipped", "fuse": "skipped", "recalibrate": "skipped",
                                 "finetune": "ran", "export": "ran", "match": "skipped", "eval": "ran"}
    (out / "grown.safetensors").unlink()  # a missing output is made again, and what follows from it
    summary = run([str(SMOKE), "-o", str(out), "--set", "finetune.train.lr=0.05"])
    assert statuses(summary)["fuse"] == "ran" and statuses(summary)["net2"] == "skipped"
    assert statuses(summary)["recalibrate"] == "ran"


def test_foreign_file_is_not_overwritten_without_force(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "net1.safetensors").write_bytes(b"mine")
    result = runner.invoke(app, ["run", str(SMOKE), "-o", str(out), "-q"])
    assert result.exit_code == 1
    assert "not written by this pipeline" in result.stderr and result.stdout == ""
    assert (out / "net1.safetensors").read_bytes() == b"mine"


def test_given_plain_net1_is_converted(tmp_path: Path, smoke: tuple[Path, dict]) -> None:
    src, _ = smoke
    from mgtool.export import export

    plain = tmp_path / "given.safetensors"
    export(src / "net1.safetensors", plain)
    summary = run([str(SMOKE), "-o", str(tmp_path / "run"), "--set", "net1.train=null",
                   "--set", f"net1.checkpoint={plain}", "--set", "net2.train={epochs: 1, batch_size: 32}",
                   "--set", "reference.train_match=false"])
    assert statuses(summary)["convert"] == "ran" and "net1" not in statuses(summary)
    assert [r["stage"] for r in summary["rows"]] == ["net1", "net2", "grown", "grown_bn", "final"]


def test_killed_training_stage_resumes(tmp_path: Path) -> None:
    """Kill a real `mgtool run` process during net 1, then run again: net 1 resumes."""
    recipe = yaml.safe_load(SMOKE.read_text())
    recipe["net1"]["train"]["epochs"] = 15
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(recipe))
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "mgtool", "run", str(path), "-o", str(out), "-q"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "net1.state.pt"
    deadline = time.monotonic() + 120
    try:
        while not state.exists():
            assert proc.poll() is None, "the run ended before it could be interrupted"
            assert time.monotonic() < deadline, "no resume state appeared"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    ledger = json.loads((out / "pipeline.json").read_text())
    assert ledger["stages"]["net1"]["status"] == "running"
    summary = run([str(path), "-o", str(out)])
    assert statuses(summary)["net1"] == "resumed"
    epochs = [json.loads(line)["epoch"] for line in (out / "net1.metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 16))
    assert not state.exists() and read_meta(out / "net1.safetensors").training["complete"]


@pytest.mark.parametrize("name", ["summary.json", "recipe.resolved.yaml", "net1.metrics.jsonl", "eval.json"])
def test_files_the_pipeline_did_not_write_are_left_alone(tmp_path: Path, name: str) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / name).write_text("mine")
    result = runner.invoke(app, ["run", str(SMOKE), "-o", str(out), "-q"])
    assert result.exit_code == 1 and "not written by this pipeline" in result.stderr, result.stderr
    assert (out / name).read_text() == "mine"
    assert result.stdout == ""


def test_a_foreign_ledger_is_not_adopted(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "pipeline.json").write_text('{"stages": {}}')
    result = runner.invoke(app, ["run", str(SMOKE), "-o", str(out), "-q"])
    assert result.exit_code == 1 and "not written by mgtool's runner" in result.stderr
    assert not (out / "net1.safetensors").exists()


def test_changed_output_is_refused_and_stale_tmp_files_are_removed(tmp_path: Path, smoke: tuple[Path, dict]) -> None:
    src, _ = smoke
    out = tmp_path / "run"
    out.mkdir()
    for p in src.iterdir():
        if p.is_file():
            (out / p.name).write_bytes(p.read_bytes())
    stale = out / ".finetuned.safetensors.k3j2.tmp"
    stale.write_bytes(b"half a checkpoint")
    summary = run([str(SMOKE), "-o", str(out)])
    assert set(statuses(summary).values()) == {"skipped"} and not stale.exists()
    (out / "summary.json").write_text("edited by hand")
    result = runner.invoke(app, ["run", str(SMOKE), "-o", str(out), "-q"])
    assert result.exit_code == 1 and "changed since this pipeline wrote it" in result.stderr
    (out / "summary.json").chmod(0o600)
    summary = run([str(SMOKE), "-o", str(out), "--force"])
    assert (out / "summary.json").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(("override", "message"), [
    ("fuse.init=ortogonal", "fuse.init must"), ("eval.batch_size=0", "eval.batch_size must"),
    ("arch.name=wrm", "arch.name must"), ("arch.share=all", "arch.share must"),
    ("net1.train.schedule=cos", "net1.train.schedule must"), ("runtime.device=gpu", "runtime.device must"),
    ("name=../..", "name must"),
    # growth options
    ("fuse.init_scale=-1", "synthetic-smoke.yaml: fuse.init_scale "),
    ("fuse.init_norm=huge", "synthetic-smoke.yaml: fuse.init_norm "),
    ("fuse.init_options={foo: 1}", "synthetic-smoke.yaml: fuse.init_options.foo "),
    ("recalibrate.samples=-1", "synthetic-smoke.yaml: recalibrate.samples ")])
def test_a_bad_recipe_value_fails_before_the_first_stage(tmp_path: Path, override: str, message: str) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(SMOKE), "-o", str(out), "-q", "--set", override])
    assert result.exit_code == 1 and message in result.stderr, result.stderr
    assert not out.exists()


def test_arch_options_are_checked_before_the_first_stage(tmp_path: Path) -> None:
    from mgtool.errors import MgtoolError
    from mgtool.pipeline import run_pipeline
    from mgtool.recipe import load_recipe

    recipe = load_recipe(SMOKE, ["arch.name=wrn", "arch.options={depth: 11}"])
    with pytest.raises(MgtoolError, match="depth must be"):
        run_pipeline(recipe, tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "pipeline.json").exists()  # no stage started
    with pytest.raises(MgtoolError, match="finetune.train.milestones"):  # refused when the recipe is read
        load_recipe(SMOKE, ["finetune.train.warmup_epochs=0.5", "finetune.train.schedule=step"])


def test_a_missing_given_checkpoint_fails_before_the_first_stage(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(SMOKE), "-o", str(out), "-q", "--set",
                                 f"net2.checkpoint={tmp_path / 'absent.safetensors'}"])
    assert result.exit_code == 1 and "recipe net2.checkpoint" in result.stderr and "does not exist" in result.stderr
    assert not (out / "pipeline.json").exists()


# ---------------------------------------------------------------------- growth: recalibration, curves, options

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


def _is_bn_buffer(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in BN_BUFFERS


def test_recalibration_changes_only_batchnorm_buffers_and_the_finetune_starts_from_it(
        smoke: tuple[Path, dict]) -> None:
    from mgtool.checkpoint import read_tensors

    out, summary = smoke
    grown, bn = read_tensors(out / "grown.safetensors"), read_tensors(out / "grown.bn.safetensors")
    assert grown.keys() == bn.keys()
    for key in grown:
        if not _is_bn_buffer(key):
            assert torch.equal(grown[key], bn[key]), key
    assert any(not torch.equal(grown[k], bn[k]) for k in grown if k.endswith("running_mean"))
    parents = read_meta(out / "finetuned.safetensors").provenance.parents
    assert [Path(p.path).name for p in parents] == ["grown.bn.safetensors"]
    rows = {r["stage"]: r for r in summary["rows"]}
    assert rows["grown_bn"]["label"] == "grown, BatchNorm recalibrated"
    assert summary["at_growth"] == {"fused_top1": rows["grown"]["top1"], "recalibrated_top1": rows["grown_bn"]["top1"],
                                    "recalibration_samples": 128}  # the whole 128-image training split


def test_accuracy_per_epoch_after_growth_is_recorded_and_drawn(smoke: tuple[Path, dict]) -> None:
    out, summary = smoke
    lines = [json.loads(x) for x in (out / "finetuned.metrics.jsonl").read_text().splitlines()]
    rows = {r["stage"]: r for r in summary["rows"]}
    epochs = summary["after_growth"]
    # Epoch 0 is the net the fine-tune started from, on the same test images (eval.test_set: subset).
    assert epochs[0] == {"epoch": 0, "test_top1": rows["grown_bn"]["top1"], "lr": None,
                         "flops_norm": rows["grown_bn"]["flops_norm"]}
    assert [(e["epoch"], e["test_top1"], e["lr"]) for e in epochs[1:]] == [
        (x["epoch"], x["test_top1"], x["lr"]) for x in lines]
    torch.testing.assert_close(epochs[-1]["flops_norm"], rows["final"]["flops_norm"], rtol=1e-12, atol=0)
    assert "growth_start" not in json.loads((out / "eval.json").read_text())  # epoch 0 is the row above
    from mgtool.analysis.plot import matplotlib_available

    if matplotlib_available():
        assert summary["after_growth_plot"] == str(out / "after-growth.png")
        assert (out / "after-growth.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_recalibration_off(tmp_path: Path, smoke: tuple[Path, dict]) -> None:
    """samples 0: no stage; the fine-tune starts from the fused net and, as BatchNorm trains on batch
    statistics, learns exactly the same weights (only the running statistics differ)."""
    from mgtool.checkpoint import read_tensors

    src, _ = smoke
    out = tmp_path / "run"
    summary = run([str(SMOKE), "-o", str(out), "--set", "recalibrate.samples=0",
                   "--set", "reference.train_match=false"])
    assert "recalibrate" not in statuses(summary) and not (out / "grown.bn.safetensors").exists()
    assert [r["stage"] for r in summary["rows"]] == ["net1", "net2", "grown", "final"]
    assert summary["at_growth"]["recalibrated_top1"] is None and summary["at_growth"]["recalibration_samples"] == 0
    assert [Path(p.path).name for p in read_meta(out / "finetuned.safetensors").provenance.parents] == [
        "grown.safetensors"]
    off, on = read_tensors(out / "finetuned.safetensors"), read_tensors(src / "finetuned.safetensors")
    for key in off:
        if not _is_bn_buffer(key):
            assert torch.equal(off[key], on[key]), key


def test_fuse_options_the_authors_protocol_and_a_complete_match_schedule(tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = run([str(SMOKE), "-o", str(out), "--set", "fuse.init_scale=0.25",
                   "--set", "finetune.train={epochs: 1, batch_size: 32, protocol: authors, coef_weight_decay: 0.01}",
                   "--set", "net1.train.lr_min=0.001"])
    info = runner.invoke(app, ["info", str(out / "grown.safetensors"), "--json", "--no-flops"])
    assert info.exit_code == 0, info.stderr
    ratio = json.loads(info.stdout)["tile_ratio"]
    torch.testing.assert_close(ratio["median"], 0.25, rtol=0.01, atol=0)
    recipe = read_meta(out / "finetuned.safetensors").training["recipe"]
    assert (recipe["protocol"], recipe["schedule"], recipe["lr"], recipe["coef_weight_decay"]) == (
        "authors", "cosine-restarts", 1e-4, 0.01)
    # The large net from scratch with the growth's FLOPs: a complete schedule, annealed to lr_min at its end.
    match = read_meta(out / "large-match.safetensors").training
    assert match["recipe"]["budget"] < 1 and match["recipe"]["stop_at"] == 1 and match["complete"]
    last = json.loads((out / "large-match.metrics.jsonl").read_text().splitlines()[-1])
    torch.testing.assert_close(last["lr"], 0.001, rtol=1e-9, atol=0)
    assert summary["rows"][-1]["stage"] == "match"


def test_pipeline_lines_and_names_are_printed_literally(tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(SMOKE), "-o", str(out), "--set", "name=exp[bold]x[red]",
                                 "--set", "reference.train_match=false", "--set", "recalibrate.samples=0"])
    assert result.exit_code == 0, result.stderr
    assert "net1: running -> net1.safetensors" in result.stderr and "[dim]" not in result.stderr
    assert "exp[bold]x[red]: accuracy and training FLOPs per stage" in result.stderr


def test_training_notes_are_printed_literally(capsys: pytest.CaptureFixture[str]) -> None:
    from mgtool.train.report import Reporter

    reporter = Reporter(quiet=False, main=True)
    reporter.note("wrote exp[bold]v2[/]/net.safetensors")
    reporter.end_epoch("epoch 1/1 [red]x[/red]")
    err = capsys.readouterr().err
    assert "wrote exp[bold]v2[/]/net.safetensors" in err and "epoch 1/1 [red]x[/red]" in err


def test_every_file_of_a_subset_is_an_input(tmp_path: Path) -> None:
    """A CIFAR subset is pickled batches, not .gz files: every file of the folder is fingerprinted."""
    from mgtool.pipeline import Pipeline
    from mgtool.recipe import recipe_from_dict

    data = yaml.safe_load(SMOKE.read_text())
    data["data"] = {"name": "cifar10", "dir": str(tmp_path / "cifar"), "subset": {"train": 100, "test": 50}}
    folder = tmp_path / "run" / "data"
    folder.mkdir(parents=True)
    for name in ("data_batch_1", "test_batch", "batches.meta", "subset.json", ".data_batch_1.x1.tmp"):
        (folder / name).write_bytes(b"x")
    p = Pipeline(recipe_from_dict(data), tmp_path / "run", ledger=None)  # type: ignore[arg-type]
    assert sorted(p._data_inputs()) == ["data/batches.meta", "data/data_batch_1", "data/subset.json",
                                       "data/test_batch"]


def test_the_growth_point_is_evaluated_on_the_epochs_test_images_when_eval_uses_others(tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = run([str(SMOKE), "-o", str(out), "--set", "eval.limit=32", "--set", "reference.train_match=false"])
    results = json.loads((out / "eval.json").read_text())
    assert results["grown_bn"]["samples"] == 32 and results["growth_start"]["samples"] == 64
    assert results["growth_start"]["checkpoint"] == str(out / "grown.bn.safetensors")
    start = summary["after_growth"][0]
    assert (start["epoch"], start["test_top1"], start["lr"]) == (0, results["growth_start"]["top1"], None)


def test_a_train_sections_own_budget_is_kept_unless_the_stage_sizes_it(tmp_path: Path) -> None:
    from mgtool.pipeline import Pipeline
    from mgtool.recipe import load_recipe

    recipe = load_recipe(SMOKE, ["finetune.train.budget=0.5"])
    p = Pipeline(recipe, tmp_path, ledger=None, quiet=True)  # no stage runs: the ledger is not touched
    p.preflight()
    assert p._train(recipe.finetune.train, 0).budget == 0.5
    assert p._train(recipe.finetune.train, 0, budget=0.25).budget == 0.25


def test_run_passes_on_the_fuse_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mgtool.fuse.ratios as ratios

    monkeypatch.setattr(ratios, "HELD_TILE_RATIO", 0.0)  # any new tile now warns
    result = runner.invoke(app, ["run", str(SMOKE), "-o", str(tmp_path / "run"), "-q"])
    assert result.exit_code == 0, result.stderr
    assert "fuse: warning: new tiles start at tile ratio s up to" in result.stderr
