"""Issue 11: the pre-registered reproduction of the paper's tables (bench/reproduction/PLAN.md).

    python bench/reproduction_sweep.py --part pilot --threads 1       # one part (resumable; reproduction/RUNNING.md)
    python bench/reproduction_sweep.py --part table1,table4,table2 --seeds 1   # a seed's tables, one list
    python bench/reproduction_sweep.py --part init-l --seeds 0 --leave-held   # amendment 9's post-hoc arms
    python bench/reproduction_sweep.py --part defaults --seeds 0,1,2  # amendment 10: capped and authors' code
    python bench/reproduction_sweep.py --report                       # tables + Fig. 3b from the result files alone

The arms of PLAN.md, as recipes on the sweep machinery of bench/growth_table.py (its ``Arm``,
``run_arms``, result files, ``load_results`` and plot series): each arm runs through
``mgtool.pipeline.run_pipeline`` in runs/reproduction/<setting>/<arm>, and each finished arm
writes one JSON into bench/results/reproduction/<setting>/. ``--report`` rebuilds
bench/results/reproduction/tables.md (for docs/RESULTS.md) and fig3b.png from those files alone.

Settings: ``primary`` (WRN-10 x0.125, stem 2 -> x0.25, stem 4; 60 epochs since PLAN.md's
amendments 2 and 4), ``secondary`` (x0.25 -> x0.5, Table 1 rows only; 30 epochs, amendment 5) and ``gpu``
(WRN-16 x2 -> x4, 15 epochs, bench/reproduction_gpu.sh); all on the full Fashion-MNIST, batch 128,
growth at 0.45X with net 1 given. ``primary-e15`` and ``primary-e30`` hold the pilots that
amendments 2 and 4 superseded: reported, never run again.

Init S's scale s* and the protocol P* are the demo defaults the growth-protocol issue chose with
bench/demo_defaults.py (3 seeds, 2026-11-27): ``S_STAR`` and ``P_STAR`` here, frozen for this plan
since amendment 10 moved the demo itself to ``fuse``'s capped rule (``--init-scale`` /
``--protocol`` override them; the pilot needs neither).

Names: init U is ``--init-norm unit`` (unit vectors orthogonal to the learned ones of the same
template set: mgtool's reading of the paper; arm keys keep the letter L, e.g. ``mg-L-B``, from
before amendment 10 renamed it); init S is ``--init-scale s*``; init C is ``--init-norm capped``
and init A ``--init-norm authors-code`` (amendment 10).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path
from typing import Any

import growth_table as gt

from mgtool import MgtoolError, recipe_from_dict

NAME = "reproduction"
ROOT = gt.ROOT
BUDGET = 0.45  # the paper's CIFAR budget, net 1 given
DATA_DIR = "/usr/share/datasets/fashion-mnist"
# setting -> (depth, small widen factor, epochs); the stem is 16 x widen, the large net twice as wide.
# Each setting has its own results folder, so results of different epochs never mix.
SETTINGS = {"primary": (10, 0.125, 60), "secondary": (10, 0.25, 30), "gpu": (16, 2.0, 15),
            "primary-e30": (10, 0.125, 30), "primary-e15": (10, 0.125, 15)}
SUPERSEDED = {"primary-e15": "PLAN.md amendment 2: no-go at 15 epochs; the primary setting moved to 30",
              "primary-e30": "PLAN.md amendment 4: no-go at 30 epochs; the primary setting moved to 60"}
# PLAN.md amendments 5 and 6: in these settings the pilot's go is Large - Small Match >= 1.0 and Large - Small
# >= 1.0; a setting whose pilot is no-go under it is reported, but its orderings are not counted in the verdict
AMENDED_PILOT = ("primary", "secondary", "gpu")
PROTOCOLS = {"A": "authors", "B": "complete lr 0.1 cosine"}
PROTOCOL_NAMES = {"authors": "A", "lr0.1": "B"}  # --protocol values
# PLAN.md amendment 1: every growth arm recalibrates BatchNorm on 2,048 training images after fusion
RECALIBRATE_SECTION: dict[str, Any] | None = {"samples": 2048}

TABLE1 = [("Large (plain, 1.0X)", "large"), ("Large Match (plain, 0.45X)", "large-match"),
          ("Small (plain)", "small"), ("Small Match (plain, 0.45X)", "small-match"),
          ("Small (template mixing, net 1)", "small-tm"), ("Small (template mixing, net 2)", "net2"),
          ("Template-mixing Large from scratch, 1.0X", "tm-large"),
          ("Template-mixing Large from scratch, 0.45X", "tm-large-match"),
          ("Random, protocol A", "random-A"), ("Random, protocol B", "random-B"),
          ("Net2Net, protocol A", "net2net-A"), ("Net2Net, protocol B", "net2net-B"),
          ("w/o fusion, net 1's templates reused (P*)", "nofusion-reuse"),
          ("w/o fusion, untrained second member (P*)", "nofusion-untrained"),
          ("MixtureGrowth, init U, protocol A", "mg-L-A"), ("MixtureGrowth, init U, protocol B", "mg-L-B"),
          ("MixtureGrowth, init S, protocol A", "mg-S-A"), ("MixtureGrowth, init S, protocol B", "mg-S-B")]
BASELINES = ("random-A", "random-B", "net2net-A", "net2net-B")
INIT_L = ("mg-L-A", "mg-L-B")  # init U (mgtool's unit-vector reading of the paper); amendment 7's orderings
DEFAULTS_ARMS = ("mg-C-B", "mg-A-B")  # amendment 10: fuse's capped default and the authors' code, protocol B
NORM_OF_ARM = {"C": "capped", "A": "authors-code"}  # mg-{C,A}-* arms' --init-norm
INIT_L_HEADINGS = {
    "primary": "### Orderings with init U at its better protocol ({mg_l}; post hoc, PLAN.md amendment 7)\n\n"
               "Added after seed 0 of the primary setting showed init S's coefficients at 33-255x the learned "
               "ones; the pre-registered orderings above stay the verdict's. The fusion, Table 4 and Table 2 "
               "rows (amendment 9, protocol B) appear once any of their arms has run.",
    "secondary": "### Orderings with init U, protocol B ({mg_l}; pre-registered for this setting, PLAN.md "
                 "amendment 8)\n\nWritten before the secondary setting's first arm, after amendment 7's post-hoc "
                 "finding on the primary setting.",
}
TABLE4_INITS = ("orthogonal", "random", "copy", "zero")
GROWTH_POINTS = (0.25, 0.5, 0.75)
# PLAN.md amendment 9 (post hoc): Table 4, Table 2 and w/o fusion at init U, protocol B; keys end in -L where
# the arm differs from its init-S twin
INIT_L_PROTOCOL = "B"
MG_L = f"mg-L-{INIT_L_PROTOCOL}"
INIT_L_ARMS = ("nofusion-reuse-L", "nofusion-untrained-L", "t4-random-L", "t4-copy-L",
               *(f"{MG_L}-p{p:g}" for p in GROWTH_POINTS))
BUDGET_FREE = ("large", "small", "small-tm", "net2", "tm-large")
SEEDS = (0, 1, 2)


@dataclasses.dataclass(frozen=True)
class Choices:
    """The demo defaults (growth-protocol issue): init S's scale and the protocol P* ("A" or "B")."""

    init_scale: float | None
    protocol: str

    @property
    def mg(self) -> str:
        return f"mg-S-{self.protocol}"


S_STAR = 0.1  # init S's scale: best of bench/demo_defaults.py, 3 seeds (mgtool.demo.INIT_SCALE until amendment 10)
P_STAR = "lr0.1"  # P*: the complete lr 0.1 cosine (protocol B)


def demo_choices(init_scale: float | None = None, protocol: str | None = None) -> Choices:
    """s* and P* as the plan froze them, unless overridden."""
    init_scale = S_STAR if init_scale is None else init_scale
    protocol = P_STAR if protocol is None else protocol
    if protocol not in PROTOCOL_NAMES:
        raise MgtoolError(f"protocol P* must be one of {', '.join(PROTOCOL_NAMES)}, got {protocol!r}")
    return Choices(init_scale, PROTOCOL_NAMES[protocol])


# ---------------------------------------------------------------------- arms as recipes


def base_recipe(setting: str, data_dir: str, device: str, threads: int) -> dict[str, Any]:
    """PLAN.md's setting as a base recipe (gt.default_base: full training and test sets, BN
    before blocks only, every accuracy on the full test set)."""
    depth, width, epochs = SETTINGS[setting]
    args = argparse.Namespace(small_width=width, train_size=0, eval_size=0, data_dir=data_dir, depth=depth,
                              epochs=epochs, batch_size=128, lr=0.1, device=device, threads=threads)
    return {**gt.default_base(args), "name": NAME}


def part_keys(part: str, choices: Choices | None, best: str | None = None) -> list[str]:
    """The table rows (arm keys) a part runs; their nets' arms are added by ``arms_for``."""
    if part == "pilot":
        return ["small", "small-match", "large"]
    assert choices is not None
    mg = choices.mg
    if part == "table1":
        return [key for _, key in TABLE1]
    if part == "table4":
        return [key for _, key in table4_rows(mg, "")]
    if part == "table2":
        return [key for _, key in table2_rows(mg, "")]
    if part == "init-l":
        return list(INIT_L_ARMS)
    if part == "defaults":
        return list(DEFAULTS_ARMS)
    if part == "secondary":
        return [mg, *([best] if best else []), "large", "large-match", "small", "small-tm", "net2", "small-match",
                "mg-L-B", "tm-large-match"]  # the last two: amendment 8
    if part == "gpu":  # what fits 10 minutes of an H100 (bench/reproduction_gpu.sh)
        return ["small", "small-match", "large", "large-match", f"random-{choices.protocol}",
                f"net2net-{choices.protocol}", "nofusion-reuse", mg]
    raise MgtoolError(f"unknown part {part!r}")


PARTS = ("pilot", "table1", "table4", "table2", "init-l", "secondary", "defaults", "gpu")
COMBINABLE = ("table1", "table4", "table2", "init-l")  # one setting (primary), so their arms can share one worker list


def parse_parts(text: str) -> list[str]:
    """``--part``: one part, or primary tables joined by commas."""
    parts = list(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    unknown, alone = sorted(set(parts) - set(PARTS)), sorted(set(parts) - set(COMBINABLE))
    if not parts or unknown:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown) or 'none given'} is not a part (parts: "
                                         f"{', '.join(PARTS)}); e.g. --part table1,table4,table2")
    if len(parts) > 1 and alone:
        raise argparse.ArgumentTypeError(f"only {', '.join(COMBINABLE)} combine (one setting); run "
                                         f"{', '.join(alone)} on its own")
    return parts


def arms_for(base: dict[str, Any], keys: list[str], seeds: list[int], out: Path,
             choices: Choices | None) -> list[gt.Arm]:
    """Every arm of ``keys`` for each seed, with the nets they grow, net 1 before its growers."""
    common, train, setting = gt.recipe_common(base)

    def finetune_train(protocol: str) -> dict[str, Any]:
        if protocol == "A":  # the authors' preset; no lr of our own, or it would override the preset's
            return {"epochs": train["epochs"], "batch_size": train["batch_size"], "protocol": "authors"}
        return {**train, "coef_weight_decay": 0.0}

    def grown(key: str, seed: int) -> tuple[dict[str, Any], tuple[str, ...]]:
        net1 = out / f"small-tm-s{seed}" / "scratch.safetensors"
        needs = (f"small-tm-s{seed}",)
        method, fuse, net2, protocol = "mixturegrowth", {"init": "orthogonal"}, None, None
        name, _, rest = key.partition("-")
        twin, literal = key.removesuffix("-L"), key.endswith("-L")  # amendment 9's init-U twins of init-S arms
        if name in ("random", "net2net"):
            method, protocol = name, rest
        elif key.startswith("mg-"):  # mg-{L,S}-{A,B}[-pP]
            init, protocol, *point = rest.split("-")
            fuse = ({"init": "orthogonal", "init_norm": NORM_OF_ARM[init]} if init in NORM_OF_ARM
                    else coefficients("orthogonal", literal=init == "L"))
            if point:
                net2 = {"train": train, "growth_point": float(point[0][1:]), "seed": gt.NET2_SEED + seed}
        elif twin.startswith("t4-"):
            fuse, protocol = coefficients(twin[3:], literal), init_protocol(literal)
        elif twin == "nofusion-reuse":  # differs from MixtureGrowth (same init) in fusion alone
            fuse, protocol = {**coefficients("orthogonal", literal), "fusion": False}, init_protocol(literal)
        elif twin == "nofusion-untrained":  # the authors' w/o fusion, Table 2's point 0: net 2 untrained
            fuse, protocol = coefficients("orthogonal", literal), init_protocol(literal)
            net2 = {"train": {**train, "epochs": 0}, "seed": gt.NET2_SEED + seed}
        else:
            raise MgtoolError(f"unknown arm {key!r}")
        recipe = {**common, "method": method, "net1": {"checkpoint": str(net1), "seed": seed},
                  "fuse": {**fuse, "seed": seed},
                  "finetune": {"train": finetune_train(protocol), "seed": seed, "flops_norm": BUDGET}}
        if method == "mixturegrowth" and fuse.get("fusion", True):
            if net2 is None:  # growth point 1: the net2 arm's net, trained once per seed
                net2 = {"checkpoint": str(out / f"net2-s{seed}" / "scratch.safetensors")}
                needs += (f"net2-s{seed}",)
            recipe["net2"] = net2
        if RECALIBRATE_SECTION is not None:
            recipe["recalibrate"] = RECALIBRATE_SECTION
        return recipe, needs

    def coefficients(init: str, literal: bool) -> dict[str, Any]:
        """Init U: unit vectors (unit orthogonal, uniform random; copy at its own norm);
        init S: scaled to s*. Zero has no norm."""
        if init == "zero":
            return {"init": "zero"}
        if literal:
            return {"init": init, "init_norm": "unit"} if init in ("orthogonal", "random") else {"init": init}
        return {"init": init} if choices.init_scale is None else {"init": init, "init_scale": choices.init_scale}

    def init_protocol(literal: bool) -> str:
        return INIT_L_PROTOCOL if literal else choices.protocol

    wanted: dict[str, gt.Arm] = {}

    def add(key: str, seed: int) -> None:
        free = key in BUDGET_FREE
        if key in ("small", "large", "small-match", "large-match"):
            recipe, needs = gt.scratch_recipe(common, train, key.split("-")[0], "plain", seed,
                                              None if free else BUDGET), ()
        elif key in ("small-tm", "net2"):
            recipe, needs = gt.scratch_recipe(common, train, "small", "template-mixing",
                                              seed + (gt.NET2_SEED if key == "net2" else 0), None), ()
        elif key in ("tm-large", "tm-large-match"):
            recipe, needs = gt.scratch_recipe(common, train, "large", "template-mixing", seed,
                                              None if free else BUDGET), ()
        else:
            recipe, needs = grown(key, seed)
            for need in needs:
                add(need.rsplit("-s", 1)[0], seed)
        budget = None if free else BUDGET
        arm_id = gt.Arm(key, seed, budget, {}).id
        wanted.setdefault(arm_id, gt.Arm(key, seed, budget, {**recipe, "name": arm_id}, needs, setting))

    for seed in seeds:
        for key in keys:
            add(key, seed)
    return sorted(wanted.values(), key=lambda a: (bool(a.needs), a.seed, a.id))


def blocked(arm: gt.Arm) -> str | None:
    """Why mgtool cannot run this arm's recipe yet (e.g. a recipe key the library lacks), or None."""
    try:
        recipe_from_dict(arm.recipe)
    except MgtoolError as e:
        return str(e)
    return None


def best_baseline(results: Path) -> tuple[str | None, str]:
    """The primary setting's best growth baseline (Random/Net2Net, either protocol) by mean top-1 over
    seeds 0, 1, 2 (PLAN.md), or None and what is missing while any baseline lacks a seed."""
    grouped = by_arm(results)
    missing = [f"{k} (has {', '.join(str(r['seed']) for r in grouped.get(k, [])) or 'none'})" for k in BASELINES
               if sorted(r["seed"] for r in grouped.get(k, [])) != list(SEEDS)]
    if missing:
        return None, "; ".join(missing)
    return _best(grouped, BASELINES), ""


# ---------------------------------------------------------------------- report


def by_arm(results: Path) -> dict[str, list[dict[str, Any]]]:
    """One setting's result files by arm (each list in seed order); every arm has one budget."""
    if not results.is_dir():
        return {}
    return {arm: rows for (arm, _), rows in gt.load_results(results).items()}


def _coefficient_ratios(rows: list[dict[str, Any]]) -> str:
    """Each seed's median coefficient ratio of the grown net, where its result file records one."""
    medians = [f"s{r['seed']}: {ratios['coefficient_ratio']['median']:.2f}" for r in rows
               if (ratios := r.get("grown_ratios"))]
    return ", ".join(medians) or "-"


def _row(label: str, rows: list[dict[str, Any]], growth: bool) -> str:
    norm = f"{statistics.fmean(r['flops_norm'] for r in rows):.3f}X" if rows else "-"
    line = f"| {label} | {gt.fmt([r['top1'] for r in rows])} | {len(rows)} | {norm} |"
    if not growth:
        return line + " - | - | - |"
    fused = [r["at_growth_top1"] for r in rows if r.get("at_growth_top1") is not None]
    recal = [r["at_growth_recalibrated_top1"] for r in rows if r.get("at_growth_recalibrated_top1") is not None]
    return (line + f" {gt.fmt(fused) if fused else '-'} | {gt.fmt(recal) if recal else '-'} |"
            f" {_coefficient_ratios(rows)} |")


def table(title: str, rows: list[tuple[str, str]], grouped: dict[str, list[dict[str, Any]]]) -> str:
    head = (f"| {title} | top-1 % (mean ± std) | seeds | FLOPs Norm | at growth, fused | "
            "at growth, recalibrate-bn | coefficient ratio (median, per seed) |\n|---|---|---|---|---|---|---|")
    growing = {key for _, key in rows if key not in BUDGET_FREE and not key.endswith("-match")}
    return head + "\n" + "\n".join(_row(label, grouped.get(key, []), key in growing) for label, key in rows)


def pilot_values(grouped: dict[str, list[dict[str, Any]]]) -> dict[str, list[float]]:
    """Top-1 of seeds 0 and 1 for each of the pilot's three arms."""
    return {k: [r["top1"] for r in grouped.get(k, []) if r["seed"] in (0, 1)]
            for k in ("small", "small-match", "large")}


def pilot_gaps(grouped: dict[str, list[dict[str, Any]]]) -> tuple[float, float] | None:
    """(Small Match - Small, Large - Small) in points, means over seeds 0 and 1; None until all six ran."""
    mean = pilot_values(grouped)
    if not all(len(v) == 2 for v in mean.values()):
        return None
    small = statistics.fmean(mean["small"])
    return 100 * (statistics.fmean(mean["small-match"]) - small), 100 * (statistics.fmean(mean["large"]) - small)


def amended_go(gaps: tuple[float, float]) -> bool:
    """Amendment 5's rule: Large - Small Match >= 1.0 and Large - Small >= 1.0."""
    match, width = gaps
    return width - match >= 1.0 and width >= 1.0


def pilot_markdown(grouped: dict[str, list[dict[str, Any]]], setting: str) -> str:
    """PLAN.md's go/no-go rule on seeds 0 and 1; amendment 5's beside it where that applies."""
    lines = ["| arm | seeds 0, 1: top-1 % (mean ± std) | runs |", "|---|---|---|"]
    lines += [f"| {k} | {gt.fmt(v)} | {len(v)} |" for k, v in pilot_values(grouped).items()]
    gaps = pilot_gaps(grouped)
    if gaps is None:
        lines.append("\nGo/no-go: not decided (the pilot needs both seeds of all three arms).")
        return "\n".join(lines)
    match, width = gaps
    go = match <= 0.3 and width >= 1.0
    lines.append(f"\nSmall Match - Small = {match:+.2f} points (go if <= 0.3); Large - Small = {width:+.2f} points "
                 f"(go if >= 1.0): **{'go' if go else 'no-go'}**.")
    if setting in AMENDED_PILOT:
        lines.append(f"\nAmendment 5's rule for this setting: Large - Small Match = {width - match:+.2f} points "
                     f"(go if >= 1.0); Large - Small = {width:+.2f} points (go if >= 1.0): "
                     f"**{'go' if amended_go(gaps) else 'no-go'}**.")
    return "\n".join(lines)


def paired_markdown(grouped: dict[str, list[dict[str, Any]]], mg: str) -> str:
    """MixtureGrowth (init S, P*) - the best baseline by mean top-1, per seed both have."""
    if not grouped.get(mg) or not any(grouped.get(k) for k in BASELINES):
        return f"Paired comparison: not yet ({mg} and at least one baseline need results)."
    best = _best(grouped, BASELINES)
    a, b = _by_seed(grouped, mg), _by_seed(grouped, best)
    seeds = sorted(a.keys() & b.keys())
    diffs = [100 * (a[s] - b[s]) for s in seeds]
    if not diffs:
        return f"Paired comparison {mg} - {best}: no seed has both."
    m, sd = gt.mean_std(diffs)
    per = ", ".join(f"seed {s}: {d:+.2f}" for s, d in zip(seeds, diffs))
    return (f"Paired comparison {mg} - {best} (best baseline by mean top-1), points: {per}; mean {m:+.2f}, "
            f"std {sd:.2f}, range {min(diffs):+.2f} to {max(diffs):+.2f} (seeds: {len(diffs)}).")


def _by_seed(grouped: dict[str, list[dict[str, Any]]], key: str) -> dict[int, float]:
    return {r["seed"]: r["top1"] for r in grouped.get(key, [])}


def _best(grouped: dict[str, list[dict[str, Any]]], keys: tuple[str, ...]) -> str:
    """The key with the higher mean top-1 (a baseline at its better protocol); the first if none ran."""
    ran = [k for k in keys if grouped.get(k)]
    return max(ran, key=lambda k: (statistics.fmean(r["top1"] for r in grouped[k]), k)) if ran else keys[0]


def _paired(grouped: dict[str, list[dict[str, Any]]], a: str, b: str, strict: bool) -> tuple[str, bool | None]:
    """``a > b`` (``>=`` unless strict) on the mean of per-seed differences, seeds both have."""
    x, y = _by_seed(grouped, a), _by_seed(grouped, b)
    seeds = sorted(x.keys() & y.keys())
    if not seeds:
        return "-", None
    diffs = [100 * (x[s] - y[s]) for s in seeds]
    mean = statistics.fmean(diffs)
    agree = sum(d > 0 if strict else d >= 0 for d in diffs)
    per = ", ".join(f"{d:+.2f}" for d in diffs)
    return (f"{mean:+.2f} points (per seed {per}; {agree} of {len(seeds)} agree)",
            mean > 0 if strict else mean >= 0)


def table4_rows(mg: str, sfx: str) -> list[tuple[str, str]]:
    """Table 4's (coefficient init, arm key) at mg's init: init S's arms have no suffix, init U's end in -L;
    zero has no norm, so both inits share t4-zero."""
    return [("orthogonal", mg)] + [(init, f"t4-{init}{'' if init == 'zero' else sfx}") for init in TABLE4_INITS[1:]]


def nofusion_rows(mg: str, sfx: str) -> list[tuple[str, str]]:
    """(method, arm key) of mg and its two w/o-fusion arms at mg's init (suffix as in table4_rows)."""
    return [("MixtureGrowth (fused with net 2)", mg),
            ("w/o fusion, net 1's templates reused", f"nofusion-reuse{sfx}"),
            ("w/o fusion, untrained second member", f"nofusion-untrained{sfx}")]


def table2_rows(mg: str, sfx: str) -> list[tuple[str, str]]:
    """Table 2's (growth point, arm key) at mg's init: point 0 is w/o fusion with an untrained net 2, point 1 mg."""
    return [("0 (w/o fusion, untrained net 2)", nofusion_rows(mg, sfx)[2][1])] + [
        (f"{p:g}", f"{mg}-p{p:g}") for p in GROWTH_POINTS] + [("1", mg)]


def _growth_trend(grouped: dict[str, list[dict[str, Any]]], keys: list[str]) -> tuple[str, bool | None]:
    """Table 2 (its arm keys, points 0 to 1): least-squares slope of mean top-1 against the growth point,
    and point 1 vs point 0, over the seeds every point has (a mean over 3 seeds beside one seed's figure
    would mix seed noise into the trend)."""
    points = [0.0, *GROWTH_POINTS, 1.0]
    by_seed = [_by_seed(grouped, k) for k in keys]
    seeds = sorted(set.intersection(*(set(b) for b in by_seed)))
    if not seeds:
        return "-", None
    means = [100 * statistics.fmean(b[s] for s in seeds) for b in by_seed]
    xm, ym = statistics.fmean(points), statistics.fmean(means)
    slope = sum((x - xm) * (y - ym) for x, y in zip(points, means)) / sum((x - xm) ** 2 for x in points)
    shown = ", ".join(f"{p:g}: {m:.2f}" for p, m in zip(points, means))
    return (f"slope {slope:+.2f} points per unit of growth point; means {shown} "
            f"(seeds {', '.join(map(str, seeds))}, those every point has)",
            slope >= 0 and means[-1] >= means[0])


def orderings_markdown(grouped: dict[str, list[dict[str, Any]]], mg: str, twins: tuple[str, str] | None,
                       planned: set[str] | None = None) -> str:
    """The verdict's orderings, decided by PLAN.md's amendment 3, and amendment 5's step-controlled line.
    ``twins`` is (MixtureGrowth arm, key suffix) of the w/o-fusion, Table 4 and Table 2 arms at that arm's
    init ("" for init S, "-L" for amendment 9's init U); None leaves those rows out, since against another
    init they would mix fusion, init or growth point with the init itself (amendment 7's correction).
    Rows comparing an arm outside ``planned`` (the setting's plan, None for all) are left out."""
    random, net2net = _best(grouped, ("random-A", "random-B")), _best(grouped, ("net2net-A", "net2net-B"))
    rows = []

    def row(name: str, keys: tuple[str, ...], what: str, result: tuple[str, bool | None]) -> None:
        if planned is None or set(keys) <= planned:
            rows.append((name, what, result))

    row("MixtureGrowth above Random", (random,), f"{mg} - {random}", _paired(grouped, mg, random, True))
    row("MixtureGrowth above Net2Net", (net2net,), f"{mg} - {net2net}", _paired(grouped, mg, net2net, True))
    if twins is not None:
        grower, sfx = twins
        t4, points = dict(table4_rows(grower, sfx)), [key for _, key in table2_rows(grower, sfx)]
        (_, reuse), (_, untrained) = nofusion_rows(grower, sfx)[1:]
        rnd, copy = t4["random"], t4["copy"]
        row("fusion above w/o fusion (templates reused)", (reuse,), f"{grower} - {reuse}",
            _paired(grouped, grower, reuse, True))
        row("fusion above w/o fusion (untrained member)", (untrained,), f"{grower} - {untrained}",
            _paired(grouped, grower, untrained, True))
        row("orthogonal >= random", (rnd,), f"{grower} - {rnd}", _paired(grouped, grower, rnd, False))
        row("random > copy", (rnd, copy), f"{rnd} - {copy}", _paired(grouped, rnd, copy, True))
        row("late growth >= early growth", tuple(points), "Table 2, points 0 to 1", _growth_trend(grouped, points))
    row("MixtureGrowth above Small Match (informative)", ("small-match",), f"{mg} - small-match",
        _paired(grouped, mg, "small-match", True))
    if mg in INIT_L:  # amendment 8: does growing add anything to template mixing itself?
        row("MixtureGrowth above the template-mixing Large from scratch at 0.45X (informative)",
            ("tm-large-match",), f"{mg} - tm-large-match", _paired(grouped, mg, "tm-large-match", True))
    word = {True: "yes", False: "**no**", None: "not decided"}
    lines = ["| ordering | comparison | figures | holds |", "|---|---|---|---|"]
    lines += [f"| {name} | {what} | {figures} | {word[holds]} |" for name, what, (figures, holds) in rows]
    return "\n".join(lines)


def planned_keys(setting: str, grouped: dict[str, list[dict[str, Any]]], mg: str) -> set[str] | None:
    """The arm keys a setting's plan runs, or None for every key (the primary setting). The secondary and
    GPU settings run part of Table 1 only; their report leaves out the rows that can never have results."""
    if setting not in ("secondary", "gpu"):
        return None
    choices = Choices(None, mg[-1])  # the keys depend on P* alone
    return set(part_keys(setting, choices, _best(grouped, BASELINES))) | {"small-tm", "net2"} | set(
        DEFAULTS_ARMS if setting == "secondary" else ())


def init_l_tables(grouped: dict[str, list[dict[str, Any]]]) -> str:
    """Amendment 9's arms: Table 4, w/o fusion and Table 2 at init U, protocol B (post hoc)."""
    return (f"### Table 4 at init U, protocol {INIT_L_PROTOCOL} (post hoc, PLAN.md amendment 9)\n\n"
            f"{table('Coefficient init', table4_rows(MG_L, '-L'), grouped)}\n\n"
            f"### w/o fusion at init U, protocol {INIT_L_PROTOCOL} (post hoc, PLAN.md amendment 9)\n\n"
            f"{table('Method', nofusion_rows(MG_L, '-L'), grouped)}\n\n"
            f"### Table 2 at init U, protocol {INIT_L_PROTOCOL} (post hoc, PLAN.md amendment 9)\n\n"
            f"{table('Growth point', table2_rows(MG_L, '-L'), grouped)}\n")


PREDICTION_POINTS = 0.3  # amendment 10: capped lands within this many points of init U (mean of per-seed diffs)


def defaults_markdown(grouped: dict[str, list[dict[str, Any]]]) -> str:
    """Amendment 10: fuse's capped default and the authors' code beside init U, protocol B."""
    rows = [("init U (`--init-norm unit`)", "mg-L-B"), ("capped (`--init-norm capped`, the default)", "mg-C-B"),
            ("the authors' code (`--init-norm authors-code`)", "mg-A-B")]
    text = f"{table('Coefficient init (MixtureGrowth, protocol B)', rows, grouped)}\n\n"
    x, y = _by_seed(grouped, "mg-C-B"), _by_seed(grouped, "mg-L-B")
    seeds = sorted(x.keys() & y.keys())
    if seeds:
        diffs = [100 * (x[s] - y[s]) for s in seeds]
        mean = statistics.fmean(diffs)
        held = "holds" if abs(mean) <= PREDICTION_POINTS else "**fails**"
        text += (f"Prediction (pre-registered): capped within {PREDICTION_POINTS} points of init U: mg-C-B - mg-L-B = "
                 f"{mean:+.2f} points (per seed {', '.join(f'{d:+.2f}' for d in diffs)}; seeds: {len(seeds)}): "
                 f"{held}.\n")
    figures, _ = _paired(grouped, "mg-A-B", "mg-L-B", True)
    return text + f"Informative (post hoc arm): mg-A-B - mg-L-B = {figures}.\n"


def mg_key(grouped: dict[str, list[dict[str, Any]]]) -> str:
    """P*'s MixtureGrowth arm, as recorded in the result files (Table 4's orthogonal row)."""
    for r in grouped.get("t4-copy", []) + grouped.get("t4-random", []) + grouped.get("nofusion-reuse", []):
        if r["recipe"]["finetune"]["train"].get("protocol") == "authors":
            return "mg-S-A"
        return "mg-S-B"
    for protocol in ("A", "B"):  # Table 2's points carry P* in their key
        if any(k.startswith(f"mg-S-{protocol}-p") for k in grouped):
            return f"mg-S-{protocol}"
    return "mg-S-A" if grouped.get("mg-S-A") and not grouped.get("mg-S-B") else "mg-S-B"


def report(root: Path) -> str:
    """tables.md and fig3b.png in ``root`` from the result files in root/<setting>/ alone."""
    settings = {s: by_arm(root / s) for s in SETTINGS}
    if not any(settings.values()):
        raise MgtoolError(f"{root}: no result files of the reproduction sweep (in {', '.join(SETTINGS)}/)")
    texts = []
    for setting, grouped in settings.items():
        if not grouped:
            continue
        depth, width, epochs = SETTINGS[setting]
        mg = mg_key(grouped)
        texts.append(f"## {setting}: WRN-{depth} x{width:g} -> x{2 * width:g}, full Fashion-MNIST, {epochs} epochs, "
                     f"growth at {BUDGET:g}X (net 1 given)\n")
        texts.append(f"### Pilot\n\n{pilot_markdown(grouped, setting)}\n")
        if setting in SUPERSEDED:
            texts.append(f"Superseded ({SUPERSEDED[setting]}).\n")
            continue
        planned = planned_keys(setting, grouped, mg)
        t1 = [(label, key) for label, key in TABLE1 if planned is None or key in planned]
        texts.append(f"### Table 1\n\n{table('Method', t1, grouped)}\n\n{paired_markdown(grouped, mg)}\n")
        if planned is None:  # Tables 4 and 2: the primary setting's alone
            texts.append(f"### Table 4 (init S's scale, P* = {mg[-1]})\n\n"
                         f"{table('Coefficient init', table4_rows(mg, ''), grouped)}\n")
            texts.append(f"### Table 2 (init S, P* = {mg[-1]})\n\n"
                         f"{table('Growth point', table2_rows(mg, ''), grouped)}\n")
        texts.append(f"### Orderings (PLAN.md amendments 3 and 5)\n\n"
                     f"{orderings_markdown(grouped, mg, (mg, ''), planned)}\n")
        gaps = pilot_gaps(grouped)
        if gaps is not None and not amended_go(gaps):
            texts.append("Not counted in the verdict: this setting's pilot is no-go under amendment 5's rule "
                         "(PLAN.md amendment 6: where width does not help, growth cannot be tested).\n")
        literal = any(grouped.get(k) for k in INIT_L_ARMS)
        if literal:
            texts.append(init_l_tables(grouped))
        if any(grouped.get(k) for k in INIT_L):
            mg_l = _best(grouped, INIT_L)
            twins = (MG_L, "-L") if literal else None
            texts.append(f"{INIT_L_HEADINGS.get(setting, INIT_L_HEADINGS['primary']).format(mg_l=mg_l)}\n\n"
                         f"{orderings_markdown(grouped, mg_l, twins, planned)}\n")
        if any(grouped.get(k) for k in DEFAULTS_ARMS):
            texts.append(f"### fuse's default rule and the authors' code (PLAN.md amendment 10)\n\n"
                         f"{defaults_markdown(grouped)}")
    text = "\n".join(texts)
    gt.atomic_write(root / "tables.md", lambda tmp: Path(tmp).write_text(text))
    primary = settings["primary"]
    from mgtool.analysis.plot import matplotlib_available, plot_series

    if matplotlib_available() and primary:
        rows = [(init, primary.get(key, [])) for init, key in table4_rows(mg_key(primary), "")]
        plot_series(gt.curve_series(rows), out=root / "fig3b.png",
                    title="Top-1 per epoch after growth, by coefficient init (Fig. 3b, primary setting)",
                    xlabel="training FLOPs Norm (net 1 given)", ylabel="top-1 on the test set (%)")
    return text


# ---------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", type=parse_parts,
                   help="pilot, table1, table4, table2, init-l, secondary or gpu; the primary setting's parts "
                   "combine with commas (table1,table4,table2: one worker list, so a worker waits only when every arm "
                   "left in all of them is held by another). init-l: PLAN.md amendment 9's post-hoc arms.")
    p.add_argument("--report", action="store_true", help="Only rebuild tables.md and fig3b.png from the results.")
    p.add_argument("--add-ratios", action="store_true",
                   help="Only add the grown nets' coefficient and tile ratios to result files written before they "
                   "recorded them, from the arms' run folders under --out (those this machine has).")
    p.add_argument("--seeds", default=None, help="Comma-separated seeds (default: 0,1 for the pilot, 0 for gpu, "
                   "else 0,1,2).")
    p.add_argument("--arms", default=None, help="Comma-separated arm keys: only these of the part's rows (to split "
                   "a part into runs of at most ~2 hours; see reproduction/RUNNING.md).")
    p.add_argument("--init-scale", type=float, default=None, help="Init S's scale (default: S_STAR, 0.1).")
    p.add_argument("--protocol", choices=tuple(PROTOCOL_NAMES), default=None,
                   help="P*: authors (A) or lr0.1 (B) (default: P_STAR, lr0.1).")
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / NAME)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / NAME)
    p.add_argument("--data-dir", default=DATA_DIR)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default).")
    p.add_argument("--dry-run", action="store_true", help="List the arms (and blocked ones) and stop.")
    p.add_argument("--leave-held", action="store_true",
                   help="Once every arm left is held by another worker (or grows a net it holds), stop instead of "
                   "waiting for it: that worker runs them. For a loop over seeds, so no worker idles between them.")
    args = p.parse_args(argv)
    try:
        if args.report:
            print(report(args.results))
            return 0
        if args.add_ratios:
            if not args.results.is_dir():
                raise MgtoolError(f"{args.results}: no such results folder (give --results)")
            for setting in sorted(p.name for p in args.results.iterdir() if p.is_dir()):
                for arm_id in gt.add_grown_ratios(args.results / setting, args.out / setting):
                    print(f"{setting}/{arm_id}.json: grown_ratios added")
            return 0
        if args.part is None:
            raise MgtoolError(f"give --part {'|'.join(PARTS)}, or --report")
        parts = args.part
        part = parts[0]
        setting = {"secondary": "secondary", "defaults": "secondary", "gpu": "gpu"}.get(part, "primary")
        default_seeds = {"pilot": "0,1", "gpu": "0"}.get(part, "0,1,2")
        seeds = [int(s) for s in (args.seeds or default_seeds).split(",") if s.strip()]
        choices = None if part == "pilot" else demo_choices(args.init_scale, args.protocol)
        only = None if args.arms is None else [k.strip() for k in args.arms.split(",") if k.strip()]
        best, missing = best_baseline(args.results / "primary") if part == "secondary" else (None, "")
        if part == "secondary" and best is None and (only is None or set(only) & set(BASELINES)):
            raise MgtoolError(f"the secondary setting runs the primary setting's best baseline by its mean over seeds "
                              f"0, 1, 2, not known yet: {missing}; run the primary's table1 first, or the secondary's "
                              f"other arms with --arms")
        out = (args.out / setting).resolve()
        keys = list(dict.fromkeys(k for p in parts for k in part_keys(p, choices, best)))
        if only is not None:
            if not only or set(only) - set(keys):
                raise MgtoolError(f"--arms: {', '.join(sorted(set(only) - set(keys))) or 'none given'} not in part "
                                  f"{','.join(parts)} (its arms: {', '.join(keys)})")
            keys = only
        arms = arms_for(base_recipe(setting, args.data_dir, args.device, args.threads), keys, seeds, out, choices)
        if part == "gpu":  # what matters most first, in case the time runs out: the growth arms
            arms.sort(key=lambda a: (a.key not in ("small-tm", "net2"), not a.needs))
        stuck = {a.id: why for a in arms if (why := blocked(a))}
        for arm_id, why in stuck.items():
            gt.log(f"{arm_id}: blocked, not run: {why}")
        runnable = [a for a in arms if a.id not in stuck]
        gt.log(f"{len(runnable)} arms to run ({len(stuck)} blocked); results in {args.results / setting}")
        if args.dry_run:
            print("\n".join(a.id for a in runnable))
            return 0
        command = " ".join(["python bench/reproduction_sweep.py", *(argv if argv is not None else sys.argv[1:])])
        gt.run_arms(runnable, out, args.results / setting, command, f"{NAME}/{setting}", args.leave_held)
        print(report(args.results))
    except MgtoolError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
