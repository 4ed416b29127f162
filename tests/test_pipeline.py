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
STAGE_FILES = ("net1.safetensors", "net2.safetensors", "grown.safetensors", "finetuned.safetensors",
               "final.safetensors", "large-match.safetensors", "eval.json", "summary.json", "pipeline.json",
               "recipe.resolved.yaml")
runner = CliRunner()


def run(args: list[str]) -> dict:
    result = runner.invoke(app, ["run", *args, "--json", "-q"])
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
    assert statuses(summary) == {s: "ran" for s in ("net1", "net2", "fuse", "finetune", "export", "match", "eval")}
    assert json.loads((out / "summary.json").read_text()) == summary
    resolved = (out / "recipe.resolved.yaml").read_text()
    assert resolved.startswith("# mgtool run ")
    assert yaml.safe_load(resolved)["name"] == "synthetic-smoke"
    assert read_meta(out / "final.safetensors").kind == "plain"
    assert [r["stage"] for r in summary["rows"]] == ["net1", "net2", "grown", "final", "match"]
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
    torch.testing.assert_close(rows["final"]["flops_charged"], net2.flops.training + ft_spent, rtol=1e-12, atol=0)
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
    before = {n: sha256_file(out / n) for n in STAGE_FILES[:7]}
    summary = run([str(SMOKE), "-o", str(out)])
    assert set(statuses(summary).values()) == {"skipped"}
    assert {n: sha256_file(out / n) for n in STAGE_FILES[:7]} == before


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
    assert statuses(summary) == {"net1": "skipped", "net2": "skipped", "fuse": "skipped", "finetune": "ran",
                                 "export": "ran", "match": "skipped", "eval": "ran"}
    (out / "grown.safetensors").unlink()  # a missing output is made again, and what follows from it
    summary = run([str(SMOKE), "-o", str(out), "--set", "finetune.train.lr=0.05"])
    assert statuses(summary)["fuse"] == "ran" and statuses(summary)["net2"] == "skipped"


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
    assert [r["stage"] for r in summary["rows"]] == ["net1", "net2", "grown", "final"]


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


@pytest.mark.parametrize(("override", "key"), [
    ("fuse.init=ortogonal", "fuse.init"), ("eval.batch_size=0", "eval.batch_size"), ("arch.name=wrm", "arch.name"),
    ("arch.share=all", "arch.share"), ("net1.train.schedule=cos", "net1.train.schedule"),
    ("runtime.device=gpu", "runtime.device"), ("name=../..", "name")])
def test_a_bad_recipe_value_fails_before_the_first_stage(tmp_path: Path, override: str, key: str) -> None:
    out = tmp_path / "run"
    result = runner.invoke(app, ["run", str(SMOKE), "-o", str(out), "-q", "--set", override])
    assert result.exit_code == 1 and f"{key} must" in result.stderr, result.stderr
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
