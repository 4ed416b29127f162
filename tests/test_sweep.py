"""bench/growth_table.py end to end on synthetic data: arms as recipes on the runner, one JSON per arm,
a report rebuilt byte for byte from those files alone."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "synthetic-smoke.yaml"
RUN = ("small-tm", "net2", "large", "large-match", "random", "net2net", "mg-nofusion", "mg-orthogonal",
       "mg-orthogonal-p0.5")


def load_sweep():
    spec = importlib.util.spec_from_file_location("growth_table", ROOT / "bench" / "growth_table.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["growth_table"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory):
    gt = load_sweep()
    root = tmp_path_factory.mktemp("sweep")
    arms = gt.arms_for(yaml.safe_load(SMOKE.read_text()), ["table1", "table4", "table2", "sweep"], [0], 0.45,
                       [0.6], root / "runs")
    chosen = [a for a in arms if a.key in RUN and a.budget in (None, 0.45)]
    gt.run_arms(chosen, root / "runs", root / "results", "pytest")
    return gt, root, arms, chosen


def test_every_table_row_is_an_arm_with_a_valid_recipe(sweep) -> None:
    gt, _, arms, _ = sweep
    from mgtool.recipe import recipe_from_dict

    keys = {a.key for a in arms}
    for _, rows in gt.TABLES.values():
        assert {k for _, k in rows} <= keys
    assert len({a.id for a in arms}) == len(arms)
    assert {a.budget for a in arms if a.key == "random"} == {0.45, 0.6}
    order = [a.needs is not None for a in arms]
    assert order == sorted(order)  # net 1 (small-tm) before the arms that grow it
    for arm in arms:
        recipe = recipe_from_dict(arm.recipe)
        assert recipe.name == arm.id
        if arm.needs:
            assert recipe.net1.checkpoint.endswith(f"{arm.needs[0]}/scratch.safetensors")
        if arm.key in ("mg-orthogonal", "mg-copy"):
            assert arm.needs == ("small-tm-s0", "net2-s0")
            assert recipe.net2.checkpoint.endswith("net2-s0/scratch.safetensors")


def test_each_finished_arm_writes_one_result_file(sweep) -> None:
    gt, root, _, chosen = sweep
    results = root / "results"
    assert sorted(p.stem for p in results.glob("*.json")) == sorted(a.id for a in chosen)
    r = json.loads((results / "mg-orthogonal-b0.45-s0.json").read_text())
    for key in ("arm", "seed", "budget", "recipe", "top1", "flops_norm", "at_growth_top1", "curve", "command",
                "machine", "torch", "wall_s"):
        assert key in r, key
    assert r["arm"] == "mg-orthogonal" and r["seed"] == 0 and r["torch"] == torch.__version__
    assert 0.0 <= r["top1"] <= 1.0 and 0.0 <= r["at_growth_top1"] <= 1.0 and r["curve"]
    assert r["curve"][-1]["flops_norm"] == pytest.approx(r["flops_norm"], rel=1e-9)
    large = json.loads((results / "large-s0.json").read_text())
    torch.testing.assert_close(large["flops_norm"], 1.0, rtol=1e-9, atol=0)  # the reference is Large itself
    assert large["at_growth_top1"] is None
    for name in ("random", "net2net", "mg-nofusion"):
        res = json.loads((results / f"{name}-b0.45-s0.json").read_text())
        assert res["flops_norm"] > 0 and res["at_growth_top1"] is not None
    half = json.loads((results / "mg-orthogonal-p0.5-b0.45-s0.json").read_text())
    assert half["recipe"]["net2"]["growth_point"] == 0.5
    # net 2 at growth point 1 is the net2 arm's net: fused as given, and charged
    summary = json.loads((root / "runs" / "mg-orthogonal-b0.45-s0" / "summary.json").read_text())
    rows = {row["stage"]: row for row in summary["rows"]}
    net2 = json.loads((results / "net2-s0.json").read_text())
    assert rows["net2"]["checkpoint"].endswith("net2-s0/scratch.safetensors")
    torch.testing.assert_close(rows["net2"]["flops_norm"], net2["flops_norm"], rtol=1e-12, atol=0)
    assert rows["grown"]["flops_charged"] == rows["net2"]["flops_charged"] > 0


def test_rerun_runs_nothing(sweep) -> None:
    gt, root, _, chosen = sweep
    before = {p.name: p.read_bytes() for p in (root / "results").glob("*.json")}
    gt.run_arms(chosen, root / "runs", root / "results", "pytest again")
    assert {p.name: p.read_bytes() for p in (root / "results").glob("*.json")} == before
    # how it runs (threads, device) is not what it computes: still nothing to run
    elsewhere = [gt.Arm(a.key, a.seed, a.budget, {**a.recipe, "runtime": {"device": "cpu", "threads": 2}},
                        a.needs, a.setting) for a in chosen]
    gt.run_arms(elsewhere, root / "runs", root / "results", "pytest, 2 threads")
    assert {p.name: p.read_bytes() for p in (root / "results").glob("*.json")} == before
    assert all(json.loads(b)["wall_s"] > 0 for b in before.values())


def test_a_fresh_checkout_elsewhere_resumes_with_the_kept_nets(sweep, tmp_path: Path) -> None:
    gt, root, arms, chosen = sweep
    for net in ("small-tm-s0", "net2-s0"):  # the nets other arms grow are kept beside the results
        assert (root / "results" / "nets" / f"{net}.safetensors").read_bytes() == \
            (root / "runs" / net / "scratch.safetensors").read_bytes()
    results = tmp_path / "results"
    shutil.copytree(root / "results", results)
    before = {p.name: p.read_bytes() for p in results.glob("*.json")}
    # another checkout: its runs folder lies elsewhere and is empty, so every net path differs
    fresh = gt.arms_for(yaml.safe_load(SMOKE.read_text()), ["table4"], [0], 0.45, [0.6], tmp_path / "runs")
    copy = [a for a in fresh if a.key == "mg-copy" and a.budget == 0.45]
    redo = [a for a in fresh if a.id in {c.id for c in chosen}]
    assert copy and redo and not (tmp_path / "runs").exists()
    gt.run_arms(redo + copy, tmp_path / "runs", results, "pytest, fresh machine")
    assert {p.name: p.read_bytes() for p in results.glob("*.json") if p.name in before} == before  # none rerun
    assert json.loads((results / f"{copy[0].id}.json").read_text())["top1"] >= 0.0
    assert (tmp_path / "runs" / "small-tm-s0" / "scratch.safetensors").read_bytes() == \
        (root / "results" / "nets" / "small-tm-s0.safetensors").read_bytes()


def test_a_net_that_is_nowhere_is_named_with_the_way_out(sweep, tmp_path: Path) -> None:
    gt, root, _, _ = sweep
    results = tmp_path / "results"
    shutil.copytree(root / "results", results, ignore=shutil.ignore_patterns("nets"))
    fresh = gt.arms_for(yaml.safe_load(SMOKE.read_text()), ["table4"], [0], 0.45, [0.6], tmp_path / "runs")
    zero = [a for a in fresh if a.key == "mg-zero" and a.budget == 0.45]
    with pytest.raises(gt.MgtoolError, match=r"neither at .*small-tm-s0/scratch.safetensors nor kept at .*"
                                            r"delete .*small-tm-s0.json to train it again"):
        gt.run_arms(zero, tmp_path / "runs", results, "pytest")
    assert not (results / f"{zero[0].id}.json").exists()


def test_an_arm_another_worker_runs_is_awaited_and_logged_once(sweep, tmp_path: Path, monkeypatch,
                                                                capsys: pytest.CaptureFixture) -> None:
    gt, root, _, chosen = sweep
    import mgtool

    arm = next(a for a in chosen if a.key == "large")
    results = tmp_path / "results"
    results.mkdir()
    calls, naps = [], []

    def held(*args, **kwargs):
        calls.append(args)
        raise gt.FolderBusy("held")

    def nap(seconds: float) -> None:  # the other worker finishes during the third wait
        naps.append(seconds)
        if len(naps) == 3:
            shutil.copy(root / "results" / f"{arm.id}.json", results / f"{arm.id}.json")

    monkeypatch.setattr(mgtool, "run_pipeline", held)  # bench uses the public name
    monkeypatch.setattr(gt.time, "sleep", nap)
    assert gt.run_arms([arm], tmp_path / "runs", results, "pytest") == 0
    assert len(calls) == 3 and naps == [10, 10, 10]
    err = capsys.readouterr().err
    assert err.count(f"{arm.id}: running") == 1 and err.count("another worker runs it") == 1


def test_leave_held_stops_instead_of_waiting_for_held_arms_and_their_growers(sweep, tmp_path: Path, monkeypatch,
                                                                               capsys: pytest.CaptureFixture) -> None:
    gt, _, _, chosen = sweep
    import mgtool

    grower = next(a for a in chosen if a.needs)
    nets = [a for a in chosen if a.id in grower.needs]
    calls = []

    def held(recipe, folder, **kwargs):
        calls.append(Path(folder).name)
        raise gt.FolderBusy("held")

    def nap(seconds: float) -> None:
        raise AssertionError("a worker told to leave held arms waited")

    monkeypatch.setattr(mgtool, "run_pipeline", held)  # bench uses the public name
    monkeypatch.setattr(gt.time, "sleep", nap)
    results = tmp_path / "results"
    assert gt.run_arms([*nets, grower], tmp_path / "runs", results, "pytest", leave_held=True) == 0
    assert sorted(calls) == sorted(a.id for a in nets)  # the grower is never started without its nets
    assert not list(results.glob("*.json"))
    assert "left to the worker that holds them (or their nets): " in capsys.readouterr().err


def test_report_is_rebuilt_byte_for_byte_from_the_result_files_alone(sweep, tmp_path: Path) -> None:
    gt, root, _, _ = sweep
    copy = tmp_path / "results"
    copy.mkdir()
    for p in (root / "results").glob("*.json"):
        shutil.copy(p, copy / p.name)
    text = gt.report(copy, 0.45, [0.6])
    outputs = ["tables.md", "fig3a.png", "fig3b.png"]
    first = {n: (copy / n).read_bytes() for n in outputs}
    assert gt.main(["--report", "--results", str(copy), "--sweep-budgets", "0.6"]) == 0
    assert {n: (copy / n).read_bytes() for n in outputs} == first
    assert first["tables.md"].decode() == text
    assert "| MixtureGrowth (orthogonal) | " in text and "| 1 | " in text
    assert "| Small | not run | 0 | - |" in text  # an arm without results is shown as such
    assert "| 0.5 | " in text


def test_report_without_results_fails_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gt = load_sweep()
    assert gt.main(["--report", "--results", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith(f"error: {tmp_path}: no result files")


def test_report_refuses_results_of_two_settings(sweep, tmp_path: Path) -> None:
    gt, root, _, _ = sweep
    for p in (root / "results").glob("*.json"):
        shutil.copy(p, tmp_path / p.name)
    other = json.loads((tmp_path / "large-s0.json").read_text())
    (tmp_path / "large-s1.json").write_text(json.dumps({**other, "seed": 1, "setting_sha256": "another"}))
    with pytest.raises(gt.MgtoolError, match="2 different settings"):
        gt.report(tmp_path, 0.45, [])
