"""bench/reproduction_sweep.py (issue 11): PLAN.md's arms as recipes, one JSON per arm on synthetic data,
the report (pilot go/no-go, paired comparison, tables, Fig. 3b) rebuilt byte for byte from the files alone."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "recipes" / "synthetic-smoke.yaml"


def load():
    sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("reproduction_sweep", ROOT / "bench" / "reproduction_sweep.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["reproduction_sweep"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


rs = load()


def smoke_base() -> dict:
    base = yaml.safe_load(SMOKE.read_text())
    base["reference"]["epochs"] = 12  # the authors' protocol warms up one whole epoch: leave the fine-tune more
    return base


def fake(arm: str, seed: int, top1: float, *, budget: float | None = 0.45, protocol: str | None = None,
         curve: tuple[float, ...] = ()) -> dict:
    """A hand-made result file, as growth_table.result_of writes it (the keys the report reads)."""
    train = {"protocol": protocol} if protocol else {"lr": 0.1}
    return {"arm": arm, "seed": seed, "budget": None if arm in rs.BUDGET_FREE else budget, "setting_sha256": "x",
            "top1": top1, "flops_norm": 1.0 if arm == "large" else 0.45, "at_growth_top1": None,
            "recipe": {"finetune": {"train": train}},
            "curve": [{"epoch": i + 1, "flops_norm": 0.3 + 0.05 * i, "test_top1": c} for i, c in enumerate(curve)]}


def write(folder: Path, results: list[dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for r in results:
        name = f"{r['arm']}{'' if r['budget'] is None else '-b0.45'}-s{r['seed']}.json"
        (folder / name).write_text(json.dumps(r))


# ---------------------------------------------------------------------- arms


def test_every_plan_arm_is_a_recipe_with_the_plan_settings(tmp_path: Path) -> None:
    choices = rs.Choices(0.25, "B")
    base = rs.base_recipe("primary", "/data", "cpu", 1)
    assert base["arch"]["width"] == 0.125 and base["arch"]["options"] == {"depth": 10, "norm": "block-input",
                                                                         "stem_width": 2}
    assert "subset" not in base["data"] and base["eval"]["test_set"] == "full"
    assert base["finetune"]["train"] == {"epochs": 60, "batch_size": 128, "lr": 0.1}  # PLAN.md amendments 2, 4
    assert rs.base_recipe("gpu", "/data", "cpu", 1)["finetune"]["train"]["epochs"] == 15
    assert rs.base_recipe("primary-e15", "/data", "cpu", 1)["finetune"]["train"]["epochs"] == 15
    assert rs.base_recipe("primary-e30", "/data", "cpu", 1)["finetune"]["train"]["epochs"] == 30
    assert rs.base_recipe("secondary", "/data", "cpu", 1)["arch"]["options"]["stem_width"] == 4
    keys = rs.part_keys("table1", choices) + rs.part_keys("table4", choices) + rs.part_keys("table2", choices)
    arms = rs.arms_for(base, keys, [0, 1, 2], tmp_path, choices)
    by = {a.id: a for a in arms}
    assert len(by) == len(arms) and {a.seed for a in arms} == {0, 1, 2}
    assert {k for _, k in rs.TABLE1} <= {a.key for a in arms}
    order = [bool(a.needs) for a in arms]
    assert order == sorted(order)  # the nets grown come before the arms that grow them
    a = by["random-A-b0.45-s1"].recipe
    assert a["method"] == "random" and a["finetune"]["flops_norm"] == 0.45
    assert a["finetune"]["train"] == {"epochs": 60, "batch_size": 128, "protocol": "authors"}  # no lr of ours
    assert by["net2net-B-b0.45-s0"].recipe["finetune"]["train"] == {"epochs": 60, "batch_size": 128, "lr": 0.1,
                                                                   "coef_weight_decay": 0.0}
    assert by["mg-L-A-b0.45-s0"].recipe["fuse"] == {"init": "orthogonal", "init_norm": "unit", "seed": 0}
    assert by["mg-S-B-b0.45-s2"].recipe["fuse"] == {"init": "orthogonal", "init_scale": 0.25, "seed": 2}
    assert by["mg-S-B-b0.45-s2"].needs == ("small-tm-s2", "net2-s2")
    assert by["t4-zero-b0.45-s0"].recipe["fuse"] == {"init": "zero", "seed": 0}
    assert by["t4-copy-b0.45-s0"].recipe["fuse"]["init_scale"] == 0.25
    assert by["nofusion-reuse-b0.45-s0"].recipe["fuse"] == {"init": "orthogonal", "init_scale": 0.25,
                                                            "fusion": False, "seed": 0}
    assert by["nofusion-untrained-b0.45-s0"].recipe["fuse"] == {"init": "orthogonal", "init_scale": 0.25, "seed": 0}
    assert "net2" not in by["nofusion-reuse-b0.45-s0"].recipe
    assert by["nofusion-untrained-b0.45-s0"].recipe["net2"]["train"]["epochs"] == 0
    assert by["mg-S-B-p0.25-b0.45-s0"].recipe["net2"]["growth_point"] == 0.25
    assert by["large-match-b0.45-s0"].recipe["scratch"] == {"train": base["finetune"]["train"], "size": "large",
                                                            "kind": "plain", "flops_norm": 0.45, "seed": 0}
    assert by["tm-large-s0"].recipe["scratch"]["kind"] == "template-mixing"
    assert by["net2-s1"].recipe["scratch"]["seed"] == 1001
    assert len({a.setting for a in arms}) == 1
    assert [a.id for a in rs.arms_for(base, rs.part_keys("pilot", None), [0, 1], tmp_path, None)] == [
        "large-s0", "small-match-b0.45-s0", "small-s0", "large-s1", "small-match-b0.45-s1", "small-s1"]


def test_amendment_9_runs_tables_4_and_2_and_w_o_fusion_at_init_l_protocol_b(tmp_path: Path) -> None:
    choices = rs.Choices(0.25, "A")  # P* = A: amendment 9's arms are at protocol B all the same
    assert rs.parse_parts("table1,init-l") == ["table1", "init-l"]
    keys = rs.part_keys("init-l", choices)
    assert set(keys) == set(rs.INIT_L_ARMS) and "t4-zero" not in keys and "mg-L-B" not in keys  # both ran
    by = {a.id: a for a in rs.arms_for(rs.base_recipe("primary", "/data", "cpu", 1), keys, [1], tmp_path, choices)}
    b = {"epochs": 60, "batch_size": 128, "lr": 0.1, "coef_weight_decay": 0.0}
    grown = [a for a in by.values() if a.needs]
    assert len(grown) == 7 and all(a.recipe["finetune"]["train"] == b for a in grown)
    assert by["t4-random-L-b0.45-s1"].recipe["fuse"] == {"init": "random", "init_norm": "unit", "seed": 1}
    assert by["t4-copy-L-b0.45-s1"].recipe["fuse"] == {"init": "copy", "seed": 1}  # its own norm, no s*
    assert by["t4-copy-L-b0.45-s1"].needs == ("small-tm-s1", "net2-s1")
    assert by["nofusion-reuse-L-b0.45-s1"].recipe["fuse"] == {"init": "orthogonal", "init_norm": "unit",
                                                              "fusion": False, "seed": 1}
    untrained = by["nofusion-untrained-L-b0.45-s1"].recipe
    assert untrained["fuse"] == {"init": "orthogonal", "init_norm": "unit", "seed": 1}
    assert untrained["net2"]["train"]["epochs"] == 0
    late = by["mg-L-B-p0.75-b0.45-s1"].recipe
    assert late["fuse"]["init_norm"] == "unit" and late["net2"]["growth_point"] == 0.75
    assert all(rs.blocked(a) is None for a in by.values())


def test_arms_the_recipe_cannot_express_yet_are_blocked_with_the_reason(tmp_path: Path) -> None:
    from mgtool.recipe import FuseSection

    arms = rs.arms_for(rs.base_recipe("primary", "/data", "cpu", 1), ["mg-S-A", "small"], [0], tmp_path,
                       rs.Choices(0.25, "A"))
    why = {a.key: rs.blocked(a) for a in arms}
    assert why["small"] is None and why["small-tm"] is None
    if "init_scale" in {f.name for f in dataclasses.fields(FuseSection)}:
        assert why["mg-S-A"] is None
    else:
        assert "init_scale" in why["mg-S-A"]


def test_the_plans_s_star_and_p_star_are_frozen_and_overridable() -> None:
    assert rs.demo_choices() == rs.Choices(0.1, "B")  # chosen by bench/demo_defaults.py, 3 seeds
    assert rs.demo_choices(0.5, "authors") == rs.Choices(0.5, "A")
    assert rs.demo_choices(init_scale=0.5) == rs.Choices(0.5, "B")
    with pytest.raises(rs.MgtoolError, match="protocol P\\* must be one of"):
        rs.demo_choices(protocol="adam")


def test_a_part_that_needs_the_demo_defaults_fails_in_one_line(monkeypatch, capsys, tmp_path: Path) -> None:
    assert rs.main(["--results", str(tmp_path)]) == 1
    assert rs.main(["--part", "pilot", "--arms", "small,mg-S-A", "--results", str(tmp_path), "--dry-run"]) == 1
    assert "--arms: mg-S-A not in part pilot (its arms: small, small-match, large)" in capsys.readouterr().err
    assert rs.main(["--part", "pilot", "--arms", "small", "--results", str(tmp_path), "--dry-run"]) == 0
    assert capsys.readouterr().out.split() == ["small-s0", "small-s1"]
    assert rs.main(["--part", "secondary", "--init-scale", "1", "--protocol", "authors",
                    "--results", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "best baseline by its mean over seeds 0, 1, 2, not known yet: random-A (has none)" in err
    write(tmp_path / "primary", [fake(k, seed, 0.8 + 0.01 * i) for i, k in enumerate(rs.BASELINES)
                                 for seed in (0, 1, 2) if (k, seed) != ("random-A", 2)])
    secondary = ["--part", "secondary", "--init-scale", "1", "--protocol", "lr0.1", "--results", str(tmp_path),
                 "--dry-run"]
    assert rs.main(secondary) == 1  # one seed short: the best is not chosen early
    assert "not known yet: random-A (has 0, 1)" in capsys.readouterr().err
    assert rs.main([*secondary, "--arms", "large,mg-L-B"]) == 0  # the arms that do not need it may run
    listed = capsys.readouterr().out.split()
    assert {"large-s2", "mg-L-B-b0.45-s2", "net2-s2"} <= set(listed)  # with the nets mg-L-B grows
    assert not any(a.startswith(("random-", "net2net-")) for a in listed)
    write(tmp_path / "primary", [fake("random-A", 2, 0.8)])
    assert rs.main(secondary) == 0
    assert "net2net-B-b0.45-s0" in capsys.readouterr().out  # the best by mean over the three seeds


def test_primary_tables_combine_into_one_worker_list(capsys, tmp_path: Path) -> None:
    choice = ["--init-scale", "0.1", "--protocol", "lr0.1", "--results", str(tmp_path), "--out", str(tmp_path / "runs")]
    listed = {}
    for parts in ("table1", "table4", "table2", "table1,table4,table2"):
        assert rs.main(["--part", parts, "--seeds", "1", "--dry-run", *choice]) == 0
        listed[parts] = capsys.readouterr().out.split()
    union = set(listed["table1"]) | set(listed["table4"]) | set(listed["table2"])
    assert sorted(listed["table1,table4,table2"]) == sorted(union)
    assert len(listed["table1,table4,table2"]) == len(union)  # arms two tables share (net 1, mg-S-B) listed once
    combined = listed["table1,table4,table2"]
    growers = [i for i, a in enumerate(combined) if a.startswith(("mg-", "t4-", "random-", "net2net-", "nofusion-"))]
    assert min(growers) > combined.index("small-tm-s1")  # nets with nothing to wait for come first
    for bad, message in (("table1,secondary", "only table1, table4, table2, init-l combine"),
                         ("table9", "table9 is not a part")):
        with pytest.raises(SystemExit) as exit_info:
            rs.main(["--part", bad, "--dry-run", *choice])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


# ---------------------------------------------------------------------- report


def test_pilot_rule_and_paired_comparison(tmp_path: Path) -> None:
    write(tmp_path / "primary", [
        fake("small", 0, 0.842), fake("small", 1, 0.844), fake("small-match", 0, 0.845),
        fake("small-match", 1, 0.846), fake("large", 0, 0.887), fake("large", 1, 0.885),
        *(fake("mg-S-A", s, t, protocol="authors") for s, t in enumerate((0.80, 0.82, 0.81))),
        *(fake("random-B", s, t) for s, t in enumerate((0.79, 0.80, 0.80))),
        *(fake("net2net-A", s, t, protocol="authors") for s, t in enumerate((0.70, 0.71, 0.72))),
        fake("t4-copy", 0, 0.5, protocol="authors")])
    text = rs.report(tmp_path)
    assert "Small Match - Small = +0.25 points (go if <= 0.3); Large - Small = +4.30 points (go if >= 1.0): " \
           "**go**." in text
    assert "Amendment 5's rule for this setting: Large - Small Match = +4.05 points (go if >= 1.0); Large - Small = " \
           "+4.30 points (go if >= 1.0): **go**." in text
    # per seed: +1, +2, +1 points; mean 1.33, sample std 0.58
    assert ("Paired comparison mg-S-A - random-B (best baseline by mean top-1), points: seed 0: +1.00, "
            "seed 1: +2.00, seed 2: +1.00; mean +1.33, std 0.58, range +1.00 to +2.00 (seeds: 3).") in text
    assert "| MixtureGrowth, init S, protocol A | 81.00 ± 1.00 | 3 | 0.450X | - | - |" in text
    assert "### Table 4 (init S's scale, P* = A)" in text and "| orthogonal | 81.00 ± 1.00 | 3 |" in text
    assert "## secondary" not in text
    write(tmp_path / "primary", [fake("small-match", 1, 0.856)])
    text = rs.report(tmp_path)
    assert "Small Match - Small = +0.75 points (go if <= 0.3); Large - Small = +4.30 points (go if >= 1.0): " \
           "**no-go**." in text
    assert "Large - Small Match = +3.55 points (go if >= 1.0)" in text and text.count("**go**.") == 1
    write(tmp_path / "primary", [fake("small-match", 0, 0.88), fake("small-match", 1, 0.88)])
    assert "Large - Small Match = +0.60 points (go if >= 1.0); Large - Small = +4.30 points (go if >= 1.0): " \
           "**no-go**." in rs.report(tmp_path)


def test_orderings_follow_amendment_3(tmp_path: Path) -> None:
    mg = [fake("mg-S-B", s, t) for s, t in enumerate((0.85, 0.86, 0.84))]
    write(tmp_path / "primary", [
        *mg, *(fake("random-A", s, t, protocol="authors") for s, t in enumerate((0.80, 0.80, 0.80))),
        *(fake("random-B", s, t) for s, t in enumerate((0.84, 0.85, 0.85))),  # the better protocol: compared
        *(fake("net2net-B", s, t) for s, t in enumerate((0.86, 0.87, 0.85))),
        fake("t4-random", 0, 0.85), fake("t4-copy", 0, 0.85),
        fake("nofusion-untrained", 0, 0.80), fake("mg-S-B-p0.25", 0, 0.81), fake("mg-S-B-p0.5", 0, 0.83),
        fake("mg-S-B-p0.75", 0, 0.84)])
    rows = {line.split(" | ")[0].lstrip("| "): line for line in rs.report(tmp_path).splitlines()
            if line.startswith("| ") and line.count(" | ") == 3}
    # per seed +1, +1, -1 points against random-B (mean 0.85 > 0.80 of random-A)
    assert rows["MixtureGrowth above Random"] == ("| MixtureGrowth above Random | mg-S-B - random-B | +0.33 points "
                                                  "(per seed +1.00, +1.00, -1.00; 2 of 3 agree) | yes |")
    assert rows["MixtureGrowth above Net2Net"].endswith("(per seed -1.00, -1.00, -1.00; 0 of 3 agree) | **no** |")
    assert rows["fusion above w/o fusion (templates reused)"].endswith("| - | not decided |")
    assert rows["orthogonal >= random"].endswith("+0.00 points (per seed +0.00; 1 of 1 agree) | yes |")
    assert rows["random > copy"].endswith("(per seed +0.00; 0 of 1 agree) | **no** |")
    # means 80, 81, 83, 84, 85 at points 0 ... 1: slope 5.2 points per unit
    assert rows["late growth >= early growth"] == (
        "| late growth >= early growth | Table 2, points 0 to 1 | slope +5.20 points per unit of growth point; "
        "means 0: 80.00, 0.25: 81.00, 0.5: 83.00, 0.75: 84.00, 1: 85.00 (seeds 0, those every point has) | yes |")
    assert rows["MixtureGrowth above Small Match (informative)"].endswith("| - | not decided |")
    write(tmp_path / "primary", [fake("small-match", 0, 0.845), fake("small-match", 1, 0.875)])
    rows = {line.split(" | ")[0].lstrip("| "): line for line in rs.report(tmp_path).splitlines()
            if line.startswith("| ") and line.count(" | ") == 3}
    assert rows["MixtureGrowth above Small Match (informative)"] == (
        "| MixtureGrowth above Small Match (informative) | mg-S-B - small-match | -0.50 points "
        "(per seed +0.50, -1.50; 1 of 2 agree) | **no** |")


def test_post_hoc_orderings_take_init_l_at_its_better_protocol_against_init_free_arms(tmp_path: Path) -> None:
    write(tmp_path / "primary", [
        fake("mg-S-B", 0, 0.84), fake("mg-L-A", 0, 0.883, protocol="authors"), fake("mg-L-B", 0, 0.90),
        fake("random-B", 0, 0.88), fake("t4-random", 0, 0.85)])
    text = rs.report(tmp_path)
    pre, post = text.split("### Orderings with init U at its better protocol (mg-L-B; post hoc, PLAN.md amendment 7)")
    assert "| MixtureGrowth above Random | mg-S-B - random-B | -4.00 points" in pre and "orthogonal >= random" in pre
    assert "| MixtureGrowth above Random | mg-L-B - random-B | +2.00 points (per seed +2.00; 1 of 1 agree) | yes |" \
        in post
    assert "orthogonal >= random" not in post and "late growth" not in post and "above Small Match" in post
    assert "w/o fusion" not in post  # the w/o-fusion arms are at init S: against init U it would mix the two
    assert "| MixtureGrowth above the template-mixing Large from scratch at 0.45X (informative) | mg-L-B - " \
        "tm-large-match | - | not decided |" in post


def test_amendment_9_tables_and_orderings_at_init_l_appear_once_its_arms_ran(tmp_path: Path) -> None:
    write(tmp_path / "primary", [
        fake("mg-S-B", 0, 0.84), fake("mg-L-B", 0, 0.90), fake("random-B", 0, 0.88), fake("t4-random", 0, 0.89),
        fake("t4-zero", 0, 0.87), fake("t4-random-L", 0, 0.86), fake("t4-copy-L", 0, 0.88),
        fake("nofusion-reuse-L", 0, 0.91), fake("nofusion-untrained-L", 0, 0.86), fake("mg-L-B-p0.25", 0, 0.87),
        fake("mg-L-B-p0.5", 0, 0.88), fake("mg-L-B-p0.75", 0, 0.89)])
    text = rs.report(tmp_path)
    pre, post = text.split("### Orderings with init U at its better protocol (mg-L-B; post hoc, PLAN.md amendment 7)")
    assert "| orthogonal >= random | mg-S-B - t4-random | -5.00 points" in pre  # init S's rows keep init S's arms
    t4 = pre[pre.index("### Table 4 at init U, protocol B (post hoc, PLAN.md amendment 9)"):]
    assert [line.split(" | ")[:2] for line in t4.splitlines()[4:8]] == [
        ["| orthogonal", "90.00 ± 0.00"], ["| random", "86.00 ± 0.00"], ["| copy", "88.00 ± 0.00"],
        ["| zero", "87.00 ± 0.00"]]
    assert "### Table 2 at init U, protocol B (post hoc, PLAN.md amendment 9)" in pre
    rows = {line.split(" | ")[0].lstrip("| "): line for line in post.splitlines() if line.count(" | ") == 3}
    assert rows["fusion above w/o fusion (templates reused)"].startswith(
        "| fusion above w/o fusion (templates reused) | mg-L-B - nofusion-reuse-L | -1.00 points")
    assert rows["fusion above w/o fusion (untrained member)"].endswith("+4.00; 1 of 1 agree) | yes |")
    assert rows["orthogonal >= random"].startswith("| orthogonal >= random | mg-L-B - t4-random-L | +4.00 points")
    assert rows["random > copy"].startswith("| random > copy | t4-random-L - t4-copy-L | -2.00 points")
    # means 86, 87, 88, 89, 90 at points 0 ... 1: slope +4
    assert "slope +4.00 points per unit of growth point; means 0: 86.00, 0.25: 87.00" in rows[
        "late growth >= early growth"] and rows["late growth >= early growth"].endswith("| yes |")


def test_growth_trend_uses_only_the_seeds_every_point_has(tmp_path: Path) -> None:
    # point 1 has three seeds and the others one: the trend compares seed 0 with seed 0 (85 at point 1), not
    # with the three seeds' mean 88, which would turn a falling trend into a rising one
    write(tmp_path / "primary", [
        *(fake("mg-S-B", s, t) for s, t in enumerate((0.85, 0.89, 0.90))), fake("nofusion-untrained", 0, 0.87),
        fake("mg-S-B-p0.25", 0, 0.87), fake("mg-S-B-p0.5", 0, 0.86), fake("mg-S-B-p0.75", 0, 0.86)])
    row = next(line for line in rs.report(tmp_path).splitlines() if line.startswith("| late growth"))
    assert "means 0: 87.00, 0.25: 87.00, 0.5: 86.00, 0.75: 86.00, 1: 85.00 (seeds 0, those every point has)" in row
    assert row.endswith("| **no** |")


def test_amendment_8_adds_init_l_and_the_template_mixing_large_match_to_the_secondary_setting(tmp_path) -> None:
    keys = rs.part_keys("secondary", rs.Choices(0.1, "B"), "random-B")
    assert keys[-2:] == ["mg-L-B", "tm-large-match"] and "mg-S-B" in keys and "random-B" in keys
    arms = {a.id: a for a in rs.arms_for(rs.base_recipe("secondary", "/data", "cpu", 1), keys, [0], tmp_path,
                                         rs.Choices(0.1, "B"))}
    assert arms["mg-L-B-b0.45-s0"].recipe["fuse"] == {"init": "orthogonal", "init_norm": "unit", "seed": 0}
    assert arms["tm-large-match-b0.45-s0"].recipe["scratch"]["kind"] == "template-mixing"
    assert arms["tm-large-match-b0.45-s0"].recipe["arch"]["options"]["stem_width"] == 4
    results = [fake("mg-L-B", 0, 0.90), fake("tm-large-match", 0, 0.89), fake("random-B", 0, 0.88)]
    write(tmp_path / "secondary", results)
    write(tmp_path / "primary", results)
    text = rs.report(tmp_path)
    primary, secondary = text.split("## secondary: ")
    assert "(mg-L-B; post hoc, PLAN.md amendment 7)" in primary and "pre-registered for this" not in primary
    assert "### Orderings with init U, protocol B (mg-L-B; pre-registered for this setting, PLAN.md amendment 8)" \
        in secondary and "post hoc" not in secondary
    assert "| MixtureGrowth above the template-mixing Large from scratch at 0.45X (informative) | mg-L-B - " \
        "tm-large-match | +1.00 points (per seed +1.00; 1 of 1 agree) | yes |" in secondary
    # a Table-1-only setting shows the rows of its plan alone: no Tables 4 and 2, no rows that can never run
    assert "### Table 4" in primary and "| Net2Net, protocol A |" in primary and "above Net2Net" in primary
    assert "### Table 4" not in secondary and "### Table 2" not in secondary and "Net2Net" not in secondary
    assert "| Random, protocol A |" not in secondary and "| Random, protocol B | 88.00" in secondary
    assert "w/o fusion" not in secondary and "| Large (plain, 1.0X) | not run |" in secondary
    write(tmp_path / "other" / "primary", [fake("mg-S-B", 0, 0.84)])
    assert "post hoc" not in rs.report(tmp_path / "other")


def test_a_setting_whose_pilot_is_no_go_is_reported_but_not_counted(tmp_path: Path) -> None:
    pilot = [fake("small", 0, 0.936), fake("small", 1, 0.938), fake("small-match", 0, 0.943),
             fake("small-match", 1, 0.941), fake("large", 0, 0.942), fake("large", 1, 0.944)]
    write(tmp_path / "gpu", [*pilot, fake("mg-S-B", 0, 0.943), fake("random-B", 0, 0.938)])
    text = rs.report(tmp_path)
    gpu = text[text.index("## gpu"):]
    assert "Amendment 5's rule for this setting: Large - Small Match = +0.10 points" in gpu
    assert "| MixtureGrowth above Random | mg-S-B - random-B | +0.50 points" in gpu
    assert "Not counted in the verdict: this setting's pilot is no-go under amendment 5's rule" in gpu
    write(tmp_path / "gpu", [fake("large", 0, 0.96), fake("large", 1, 0.96)])  # width now helps: counted
    assert "Not counted in the verdict" not in rs.report(tmp_path)


def test_a_superseded_setting_reports_its_pilot_only(tmp_path: Path) -> None:
    write(tmp_path / "primary-e15", [fake("small", 0, 0.835), fake("mg-S-A", 0, 0.80, protocol="authors")])
    write(tmp_path / "primary", [fake("small", 0, 0.85)])
    text = rs.report(tmp_path)
    assert "## primary: WRN-10 x0.125 -> x0.25, full Fashion-MNIST, 60 epochs" in text
    old = text[text.index("## primary-e15: WRN-10 x0.125 -> x0.25, full Fashion-MNIST, 15 epochs"):]
    assert "Superseded (PLAN.md amendment 2" in old and "### Table 1" not in old and "| small | 83.50" in old


def test_report_without_results_fails_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert rs.main(["--report", "--results", str(tmp_path)]) == 1
    assert capsys.readouterr().err.startswith(f"error: {tmp_path}: no result files of the reproduction sweep")


# ---------------------------------------------------------------------- end to end on synthetic data


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("reproduction")
    choices = rs.Choices(None, "A")  # init S at the initialiser's own scale (a recipe key not needed)
    keys = ["small", "large", "random-B", "nofusion-untrained", "t4-zero", "mg-S-A"]
    arms = rs.arms_for(smoke_base(), keys, [0], root / "runs", choices)
    assert all(rs.blocked(a) is None for a in arms)
    rs.gt.run_arms(arms, root / "runs", root / "results" / "primary", "pytest", "reproduction/primary")
    return root, arms


def test_each_finished_arm_writes_one_result_file(ran) -> None:
    root, arms = ran
    results = root / "results" / "primary"
    assert sorted(p.stem for p in results.glob("*.json")) == sorted(a.id for a in arms)
    untrained = json.loads((results / "nofusion-untrained-b0.45-s0.json").read_text())
    summary = json.loads((root / "runs" / "nofusion-untrained-b0.45-s0" / "summary.json").read_text())
    rows = {r["stage"]: r for r in summary["rows"]}
    assert rows["net2"]["flops_charged"] == 0  # the authors' w/o fusion: net 2 never trained
    growth = summary["at_growth"]  # the result file carries the pipeline's accuracy at growth, both ways
    assert growth["recalibrated_top1"] is not None and summary["rows"][-1]["stage"] == "final"
    assert (untrained["at_growth_top1"], untrained["at_growth_recalibrated_top1"]) == \
        (growth["fused_top1"], growth["recalibrated_top1"])
    assert untrained["recipe"]["finetune"]["train"]["protocol"] == "authors"
    assert json.loads((results / "random-B-b0.45-s0.json").read_text())["grown_ratios"] is None  # plain growth
    from mgtool.info import checkpoint_info

    grown = checkpoint_info(root / "runs" / "mg-S-A-b0.45-s0" / "grown.safetensors", count_flops=False)
    recorded = json.loads((results / "mg-S-A-b0.45-s0.json").read_text())["grown_ratios"]
    assert recorded == {"coefficient_ratio": grown["coefficient_ratio"], "tile_ratio": grown["tile_ratio"]}
    assert recorded["coefficient_ratio"]["median"] > 0


def test_ratios_are_added_to_result_files_that_predate_them(ran, tmp_path: Path, capsys) -> None:
    root, _ = ran
    shutil.copytree(root / "results" / "primary", tmp_path / "primary")
    files = {p.name: json.loads(p.read_text()) for p in (tmp_path / "primary").glob("*.json")}
    for name, result in files.items():  # as written before the field existed
        (tmp_path / "primary" / name).write_text(json.dumps({k: v for k, v in result.items() if k != "grown_ratios"},
                                                             indent=1, sort_keys=True) + "\n")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "primary").symlink_to(root / "runs")  # the sweep's layout: <out>/<setting>/<arm>
    assert rs.main(["--add-ratios", "--results", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 1
    assert "nowhere: no such results folder" in capsys.readouterr().err
    assert rs.main(["--add-ratios", "--results", str(tmp_path), "--out", str(tmp_path / "runs")]) == 0
    assert "primary/mg-S-A-b0.45-s0.json: grown_ratios added" in capsys.readouterr().out
    assert {p.name: json.loads(p.read_text()) for p in (tmp_path / "primary").glob("*.json")} == files
    row = next(line for line in rs.report(tmp_path).splitlines()
               if line.startswith("| MixtureGrowth, init S, protocol A"))
    assert row.endswith(f"| s0: {files['mg-S-A-b0.45-s0.json']['grown_ratios']['coefficient_ratio']['median']:.2f} |")


def test_report_is_rebuilt_byte_for_byte_from_the_result_files_alone(ran, tmp_path: Path) -> None:
    root, _ = ran
    shutil.copytree(root / "results" / "primary", tmp_path / "primary")
    text = rs.report(tmp_path)
    outputs = ["tables.md", "fig3b.png"] if (tmp_path / "fig3b.png").exists() else ["tables.md"]
    first = {n: (tmp_path / n).read_bytes() for n in outputs}
    assert rs.main(["--report", "--results", str(tmp_path)]) == 0
    assert {n: (tmp_path / n).read_bytes() for n in outputs} == first
    assert first["tables.md"].decode() == text
    assert "| w/o fusion, untrained second member (P*) | " in text and "| Random, protocol A | not run | 0 |" in text
    assert "Paired comparison mg-S-A - random-B" in text
