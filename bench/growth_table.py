"""The paper's Tables 1, 2 and 4 and the budget sweep (Fig. 3a), as a sweep of recipes on mgtool's runner.

    python bench/growth_table.py --only table1 --seeds 3      # run (resumable; several workers share the work)
    python bench/growth_table.py --report                     # tables + plots from the result files alone

Every arm is one recipe (built here from a base recipe), run by ``mgtool.pipeline.run_pipeline``
in its own folder OUT/<arm>; the runner skips what is done, resumes what was interrupted and
locks the folder, so a second worker started with the same command takes the arms the
first is not running. Each finished arm writes one small JSON file into the results folder
(default bench/results/<sweep name>/): its recipe, top-1, FLOPs Norm (from the pipeline's
summary), top-1 at growth, the per-epoch curve, the command, machine, torch version and wall
time. ``--report`` rebuilds tables.md and the plots from those files alone, byte for byte.

Default setting (sized for a 2-core CPU; not yet timed as a sweep): WRN-10 with BatchNorm before each block only,
small = widen 0.5 with an 8-channel stem, large = its two-fold widening; a seeded 10,000-image
training subset, 1,000 test images for the per-epoch curves, the full test set for every
reported accuracy; the large net's full schedule is 10 epochs (cosine, lr 0.1, batch 128);
growth methods get the paper's CIFAR budget of 0.45X, net 1 given. ``--base RECIPE.yaml``
takes data, architecture, runtime, evaluation, the reference schedule and the training
settings from a recipe instead (the tests use recipes/synthetic-smoke.yaml).

Arms: large, small (plain, from scratch), small-tm (template mixing, from scratch: it is net 1
of every growth arm), net2 (the same, seeded 1000 + seed: net 2 of every growth arm at growth
point 1, trained once per seed), large-match and small-match (plain, trained to the budget), random and
net2net (baselines), mg-nofusion, mg-<init> (MixtureGrowth, growth point 1) and
mg-orthogonal-p<point> (Table 2: net 2 stopped at that fraction of its schedule).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mgtool import MgtoolError, recipe_from_dict
from mgtool.checkpoint import atomic_write
from mgtool.run_summary import after_growth
from mgtool.runner import FolderBusy, digest

ROOT = Path(__file__).resolve().parents[1]

SWEEP = "growth_table"
BUDGET_FREE = ("large", "small", "small-tm", "net2")
NET2_SEED = 1000  # net 2 of seed s is seeded 1000 + s (net 1: s)
GROWTH_POINTS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
TABLE4_INITS = ("orthogonal", "random", "copy", "zero")
TABLES: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "table1": ("Method", [("Large", "large"), ("Large Match", "large-match"), ("Small", "small"),
                          ("Small Match", "small-match"), ("Small (template mixing)", "small-tm"),
                          ("Random", "random"), ("Net2Net", "net2net"), ("MixtureGrowth w/o fusion", "mg-nofusion"),
                          ("MixtureGrowth (orthogonal)", "mg-orthogonal")]),
    "table4": ("Coefficient init", [(init, f"mg-{init}") for init in TABLE4_INITS]),
    "table2": ("Net 2 training (growth point)", [("0.0 (w/o fusion)", "mg-nofusion")]
               + [(f"{p:.1f}", f"mg-orthogonal-p{p:g}") for p in GROWTH_POINTS] + [("1.0", "mg-orthogonal")]),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Arm:
    key: str  # the table row's arm (see TABLES)
    seed: int
    budget: float | None  # None: the arm does not depend on the budget
    recipe: dict[str, Any]
    needs: tuple[str, ...] = ()  # the arms whose nets this arm grows (net 1, and net 2 when trained once)
    setting: str = ""  # sha256 of the base recipe's data, architecture, schedule and evaluation

    @property
    def id(self) -> str:
        return self.key + ("" if self.budget is None else f"-b{self.budget:g}") + f"-s{self.seed}"


# ---------------------------------------------------------------------- arms as recipes


def default_base(args: argparse.Namespace) -> dict[str, Any]:
    """The base recipe of the default setting (see the module docstring)."""
    w = args.small_width
    subset = {"train": args.train_size, "test": args.eval_size, "seed": 0}
    return {
        "name": SWEEP,
        "data": {"name": "fashion-mnist", "dir": args.data_dir,
                 **({"subset": subset} if args.train_size or args.eval_size else {})},
        "arch": {"name": "wrn", "width": w,
                 "options": {"depth": args.depth, "norm": "block-input", "stem_width": round(16 * w)}},
        "finetune": {"train": {"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr}},
        "reference": {"epochs": args.epochs},
        "eval": {"test_set": "full"},
        "runtime": {"device": args.device, "loader": "device", "threads": args.threads or None},
    }


def recipe_common(base: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], str]:
    """What every arm of a base recipe shares: the recipe without its growth sections, the
    full schedule's ``train:`` section, and the setting's sha256 (data, architecture,
    schedule, evaluation; not the data folder, name or runtime)."""
    epochs = base["reference"]["epochs"]
    train = {**base["finetune"]["train"], "epochs": epochs}
    common = {k: v for k, v in base.items() if k not in ("net1", "net2", "fuse", "finetune", "scratch", "method")}
    common["reference"] = {**base["reference"], "train_match": False}
    setting = digest({k: v for k, v in {**common, "data": {**common["data"], "dir": None}}.items()
                      if k not in ("name", "description", "runtime")})
    return common, train, setting


def scratch_recipe(common: dict[str, Any], train: dict[str, Any], size: str, kind: str, seed: int,
                   flops: float | None) -> dict[str, Any]:
    """One net from scratch (Large, Small, their Match rows, template-mixing nets)."""
    return {**common, "scratch": {"train": train, "size": size, "kind": kind, "flops_norm": flops, "seed": seed}}


def arms_for(base: dict[str, Any], parts: list[str], seeds: list[int], budget: float,
             sweep_budgets: list[float], out: Path) -> list[Arm]:
    """Every arm the parts need, each once, net 1's arm before the arms that grow it."""
    common, train, setting = recipe_common(base)

    def scratch(size: str, kind: str, seed: int, flops: float | None) -> dict[str, Any]:
        return scratch_recipe(common, train, size, kind, seed, flops)

    def grown(seed: int, b: float, *, method: str = "mixturegrowth", init: str = "orthogonal",
              fusion: bool = True, point: float = 1.0) -> tuple[dict[str, Any], tuple[str, ...]]:
        """A growth arm; net 2 at growth point 1 is the ``net2`` arm's net, trained once per seed."""
        net1 = out / f"small-tm-s{seed}" / "scratch.safetensors"
        recipe = {**common, "method": method, "net1": {"checkpoint": str(net1), "seed": seed},
                  "fuse": {"init": init, "fusion": fusion, "seed": seed},
                  "finetune": {"train": train, "seed": seed, "flops_norm": b}}
        needs = (f"small-tm-s{seed}",)
        if method == "mixturegrowth" and fusion and point == 1.0:
            recipe["net2"] = {"checkpoint": str(out / f"net2-s{seed}" / "scratch.safetensors")}
            needs += (f"net2-s{seed}",)
        elif method == "mixturegrowth" and fusion:
            recipe["net2"] = {"train": train, "growth_point": point, "seed": NET2_SEED + seed}
        return recipe, needs

    wanted: dict[str, Arm] = {}

    def add(key: str, seed: int, b: float | None, recipe: dict[str, Any], needs: tuple[str, ...] = ()) -> None:
        arm_id = Arm(key, seed, b, {}).id
        wanted.setdefault(arm_id, Arm(key, seed, b, {**recipe, "name": arm_id}, needs, setting))

    for seed in seeds:
        add("small-tm", seed, None, scratch("small", "template-mixing", seed, None))
        add("net2", seed, None, scratch("small", "template-mixing", NET2_SEED + seed, None))
        for part in parts:
            table, part_budgets = ("table1", sweep_budgets) if part == "sweep" else (part, [budget])
            for b in part_budgets:
                for _, key in TABLES[table][1]:
                    if key in ("large", "small"):
                        add(key, seed, None, scratch(key, "plain", seed, None))
                    elif key in ("large-match", "small-match"):
                        add(key, seed, b, scratch(key.split("-")[0], "plain", seed, b))
                    elif key in ("random", "net2net"):
                        add(key, seed, b, *grown(seed, b, method=key))
                    elif key == "mg-nofusion":
                        add(key, seed, b, *grown(seed, b, fusion=False))
                    elif key.startswith("mg-orthogonal-p"):
                        add(key, seed, b, *grown(seed, b, point=float(key.removeprefix("mg-orthogonal-p"))))
                    elif key.startswith("mg-"):
                        add(key, seed, b, *grown(seed, b, init=key.removeprefix("mg-")))
    return sorted(wanted.values(), key=lambda a: (bool(a.needs), a.seed, a.id))


# ---------------------------------------------------------------------- running


def machine() -> str:
    import torch

    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{platform.machine()} {platform.processor() or platform.system()}, {torch.get_num_threads()} threads{gpu}"


def identity(arm: Arm) -> str:
    return recipe_identity(arm.recipe)


def grown_checkpoints(recipe: dict[str, Any]) -> dict[str, Path]:
    """The nets a recipe grows from files: section (net1, net2) -> checkpoint path."""
    return {section: Path(spec["checkpoint"]) for section in ("net1", "net2")
            if isinstance(spec := recipe.get(section), dict) and "checkpoint" in spec}


def recipe_identity(recipe: dict[str, Any]) -> str:
    """What a recipe computes: without the runtime (device, threads), which changes nothing, and with
    the checkpoint of each net it grows named by its arm's folder and file only, so that where the
    checkout lies does not matter (a fresh machine resumes the same arms)."""
    r = {k: v for k, v in recipe.items() if k != "runtime"}
    for section, path in grown_checkpoints(recipe).items():
        r[section] = {**r[section], "checkpoint": "/".join(path.parts[-2:])}
    return digest(r)


KEEP_NET_MAX_BYTES = 4 << 20  # the CPU sweeps' nets are 17-70 KB; a GPU setting's (tens of MB) stay out of git


def keep_net(arm: Arm, out: Path, results: Path) -> None:
    """Copy the net of an arm that others grow into results/nets/ (committed with the result files:
    a fresh machine needs them to run the arms that grow them), unless it is too large for git."""
    src = out / arm.id / "scratch.safetensors"
    if src.exists() and src.stat().st_size <= KEEP_NET_MAX_BYTES:
        atomic_write(results / "nets" / f"{arm.id}.safetensors", lambda tmp: shutil.copyfile(src, tmp))


def restore_nets(arm: Arm, results: Path) -> None:
    """Put back the nets ``arm`` grows from results/nets/ where this machine lacks them."""
    for path in grown_checkpoints(arm.recipe).values():
        kept = results / "nets" / f"{path.parent.name}.safetensors"
        if path.exists():
            continue
        if not kept.exists():
            raise MgtoolError(f"{arm.id}: the net it grows is neither at {path} nor kept at {kept}; delete "
                              f"{results / path.parent.name}.json to train it again")
        atomic_write(path, lambda tmp, kept=kept: shutil.copyfile(kept, tmp))


def grown_ratios(out_dir: Path) -> dict[str, Any] | None:
    """The grown net's ``coefficient_ratio`` and ``tile_ratio`` (``mgtool info --json``'s fields, as
    fused, before any training); None where the arm grew no template-mixing net."""
    from mgtool import checkpoint_info

    path = out_dir / "grown.safetensors"
    if not path.exists():
        return None
    info = checkpoint_info(path, count_flops=False)
    if info.get("coefficient_ratio") is None:
        return None
    return {k: info[k] for k in ("coefficient_ratio", "tile_ratio")}


def write_result(path: Path, result: dict[str, Any]) -> None:
    text = json.dumps(result, indent=1, sort_keys=True) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def add_grown_ratios(results: Path, out: Path) -> list[str]:
    """Add ``grown_ratios`` to result files written before they recorded it, from each arm's run
    folder under ``out`` (where this machine has it); the ids of the files changed."""
    changed = []
    for path in sorted(results.glob("*.json")):
        result = json.loads(path.read_text())
        folder = out / result["id"]
        if "grown_ratios" in result or not (folder / "pipeline.json").exists():
            continue
        result["grown_ratios"] = grown_ratios(folder)
        write_result(path, result)
        changed.append(result["id"])
    return changed


def result_of(arm: Arm, summary: dict[str, Any], command: str, sweep: str) -> dict[str, Any]:
    """The arm's result file. ``wall_s``: the time its stages took when they ran (from the ledger)."""
    import torch

    rows = {r["stage"]: r for r in summary["rows"]}
    growth = summary.get("at_growth") or {"fused_top1": None, "recalibrated_top1": None}  # the pipeline's own
    last = rows.get("final") or rows["scratch"]
    ledger = json.loads((Path(summary["out_dir"]) / "pipeline.json").read_text())
    metrics = Path(summary["out_dir"]) / f"{'scratch' if last['stage'] == 'scratch' else 'finetuned'}.metrics.jsonl"
    curve = [{k: x[k] for k in ("epoch", "flops_norm", "test_top1")}
             for x in after_growth(metrics, summary["reference_flops"], last["flops_charged"], start=None)]
    return {"sweep": sweep, "setting_sha256": arm.setting, "arm": arm.key, "id": arm.id, "seed": arm.seed,
            "budget": arm.budget,
            "recipe_sha256": identity(arm), "recipe": arm.recipe,
            "top1": last["top1"], "flops_norm": last["flops_norm"], "reference_flops": summary["reference_flops"],
            "at_growth_top1": growth["fused_top1"], "at_growth_recalibrated_top1": growth["recalibrated_top1"],
            "arch": last["arch_full"], "data": summary["data"], "eval_test_set": summary["eval_test_set"],
            "curve": curve, "grown_ratios": grown_ratios(Path(summary["out_dir"])),
            "command": command, "machine": machine(), "torch": torch.__version__,
            "wall_s": sum(e.get("wall_s", 0.0) for e in ledger["stages"].values())}


def run_arms(arms: list[Arm], out: Path, results: Path, command: str, sweep: str = SWEEP,
             leave_held: bool = False) -> int:
    """Run every arm not yet in ``results``; arms another worker holds are retried until it is done, or,
    with ``leave_held``, left to it once nothing else can run (so a worker need not idle at a part's end)."""
    from mgtool import run_pipeline

    results.mkdir(parents=True, exist_ok=True)
    grown = {n for arm in arms for n in arm.needs}
    pending, waiting = list(arms), set()
    while pending:
        left, busy, ran = [], False, False
        for arm in pending:
            path = results / f"{arm.id}.json"
            if path.exists() and recipe_identity(json.loads(path.read_text())["recipe"]) == identity(arm):
                if arm.id in grown and not (results / "nets" / f"{arm.id}.safetensors").exists():
                    keep_net(arm, out, results)
                continue
            if any(not (results / f"{n}.json").exists() for n in arm.needs):
                left.append(arm)
                continue
            restore_nets(arm, results)
            if arm.id not in waiting:
                log(f"{arm.id}: running")
            try:
                summary = run_pipeline(recipe_from_dict(arm.recipe), out / arm.id, command=command, quiet=True)
            except FolderBusy:
                if arm.id not in waiting:  # said once, not every 10 s while the other worker runs it
                    log(f"{arm.id}: another worker runs it; waiting for its result")
                    waiting.add(arm.id)
                left.append(arm)
                busy = True
                continue
            ran = True
            result = result_of(arm, summary.to_dict(), command, sweep)
            if arm.id in grown:
                keep_net(arm, out, results)
            write_result(path, result)
            log(f"{arm.id}: top-1 {result['top1']:.4f}, FLOPs Norm {result['flops_norm']:.3f}X")
        if len(left) == len(pending) and not busy:
            raise MgtoolError(f"{left[0].id}: an arm it grows ({', '.join(left[0].needs)}) has no result "
                              "and is not running")
        if left and busy:
            if leave_held and not ran:
                log(f"left to the worker that holds them (or their nets): {', '.join(a.id for a in left)}")
                return 0
            time.sleep(10)  # another worker holds an arm: wait for it
        pending = left
    return 0


# ---------------------------------------------------------------------- report (result files alone)


def load_results(results: Path) -> dict[tuple[str, float | None], list[dict[str, Any]]]:
    """The result files of one sweep (one setting), by (arm, budget), each list in seed order."""
    grouped: dict[tuple[str, float | None], list[dict[str, Any]]] = {}
    settings = set()
    for path in sorted(results.glob("*.json")):
        r = json.loads(path.read_text())
        if isinstance(r, dict) and "arm" in r:
            settings.add(r.get("setting_sha256"))
            grouped.setdefault((r["arm"], r["budget"]), []).append(r)
    if len(settings) > 1:
        raise MgtoolError(f"{results}: result files of {len(settings)} different settings; keep one sweep "
                          "(one setting) per results folder (--name)")
    for rows in grouped.values():
        rows.sort(key=lambda r: r["seed"])
    return grouped


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(values: list[float]) -> str:
    if not values:
        return "not run"
    m, s = mean_std(values)
    return f"{100 * m:.2f} ± {100 * s:.2f}"


def _get(grouped: dict, key: str, budget: float) -> list[dict[str, Any]]:
    return grouped.get((key, None if key in BUDGET_FREE else budget), [])


def table_markdown(part: str, grouped: dict, budget: float) -> str:
    title, rows = TABLES[part]
    growth = part != "table1"
    lines = [f"| {title} | top-1 % (mean ± std) | seeds | FLOPs Norm |" + (" top-1 at growth |" if growth else ""),
             "|---|---|---|---|" + ("---|" if growth else "")]
    for label, key in rows:
        ok = _get(grouped, key, budget)
        norm = f"{statistics.fmean(r['flops_norm'] for r in ok):.3f}X" if ok else "-"
        line = f"| {label} | {fmt([r['top1'] for r in ok])} | {len(ok)} | {norm} |"
        if growth:
            line += f" {fmt([r['at_growth_top1'] for r in ok if r['at_growth_top1'] is not None])} |"
        lines.append(line)
    return "\n".join(lines)


def sweep_markdown(grouped: dict, budgets: list[float]) -> str:
    lines = ["| Method | " + " | ".join(f"budget {b:g}X" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
    for label, key in TABLES["table1"][1]:
        cells = []
        for b in budgets:
            ok = _get(grouped, key, b)
            cells.append(f"{fmt([r['top1'] for r in ok])} ({len(ok)}; "
                         f"{statistics.fmean(r['flops_norm'] for r in ok):.2f}X)" if ok else "not run")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plots(grouped: dict, budgets: list[float], folder: Path) -> list[Path]:
    """Fig. 3a (final top-1 against FLOPs Norm, per method over budgets) and Fig. 3b (top-1
    per epoch after growth, per coefficient init), through the shared plot helper."""
    from mgtool.analysis.plot import matplotlib_available, plot_series

    if not matplotlib_available():
        log("matplotlib is not installed (pip install 'mgtool[plots]'): no plots")
        return []
    series = []
    for label, key in TABLES["table1"][1]:
        points = {}
        for b in budgets:
            ok = _get(grouped, key, b)
            if ok:
                x = round(statistics.fmean(r["flops_norm"] for r in ok), 6)
                points.setdefault(x, mean_std([100 * r["top1"] for r in ok]) + (len(ok),))
        if points:
            xs = sorted(points)
            series.append((f"{label} ({max(points[x][2] for x in xs)} seeds)", xs, [points[x][0] for x in xs],
                           [points[x][1] for x in xs]))
    large = _get(grouped, "large", budgets[0])
    fig3a, fig3b = folder / "fig3a.png", folder / "fig3b.png"
    plot_series(series, title="Accuracy vs training FLOPs (paper Fig. 3a analogue); mean ± std over seeds",
                xlabel="training FLOPs Norm (net 1 given; 1.0X = Large from scratch, full schedule)",
                ylabel="top-1 on the test set (%)", out=fig3a,
                hline=statistics.fmean(100 * r["top1"] for r in large) if large else None)
    curves = curve_series([(label, _get(grouped, key, budgets[0])) for label, key in TABLES["table4"][1]])
    plot_series(curves, title="Top-1 per epoch after growth, by coefficient init (paper Fig. 3b analogue)",
                xlabel="training FLOPs Norm", ylabel="top-1 on the per-epoch test images (%)", out=fig3b)
    return [fig3a, fig3b]


def curve_series(rows: list[tuple[str, list[dict[str, Any]]]]) -> list[tuple[str, list, list, list]]:
    """Fig. 3b's lines: per label, top-1 (%) per epoch after growth, mean ± std over the
    seeds' result files, against the mean FLOPs Norm after that epoch."""
    curves = []
    for label, results in rows:
        ok = [r for r in results if r["curve"]]
        n = min((len(r["curve"]) for r in ok), default=0)
        if n:
            xs = [statistics.fmean(r["curve"][i]["flops_norm"] for r in ok) for i in range(n)]
            stats = [mean_std([100 * r["curve"][i]["test_top1"] for r in ok]) for i in range(n)]
            curves.append((f"{label} ({len(ok)} seeds)", xs, [m for m, _ in stats], [s for _, s in stats]))
    return curves


def report(results: Path, budget: float, sweep_budgets: list[float]) -> str:
    grouped = load_results(results)
    if not grouped:
        raise MgtoolError(f"{results}: no result files of a growth-table sweep")
    texts = [f"### {part}\n\n{table_markdown(part, grouped, budget)}\n" for part in ("table1", "table4", "table2")]
    budgets = sorted({budget, *sweep_budgets})
    texts.append(f"### sweep (Table 1 methods at several budgets)\n\n{sweep_markdown(grouped, budgets)}\n")
    text = "\n".join(texts)
    atomic_write(results / "tables.md", lambda tmp: Path(tmp).write_text(text))
    plots(grouped, budgets, results)
    return text


# ---------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", default=SWEEP, help="The sweep's name: one setting, one results folder.")
    p.add_argument("--out", type=Path, default=None, help="Folder of the arms' run folders. [default: runs/NAME]")
    p.add_argument("--results", type=Path, default=None, help="Folder of the result files (one JSON per finished "
                   "arm), tables.md and the plots. [default: bench/results/NAME]")
    p.add_argument("--base", type=Path, default=None,
                   help="Base recipe YAML (data, arch, runtime, eval, reference, finetune.train); "
                   "default: the setting of the options below.")
    p.add_argument("--only", choices=("table1", "table2", "table4", "sweep"), action="append",
                   help="Run only this part (repeatable). Default: all four.")
    p.add_argument("--sweep-budgets", default="0.3,0.6", help="Further budgets for the Table 1 methods (Fig. 3a).")
    p.add_argument("--report", action="store_true", help="Only rebuild the tables and plots from the result files.")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budget", type=float, default=0.45, help="FLOPs Norm of every growth method.")
    p.add_argument("--train-size", type=int, default=10000, help="Training subset (0: all 60,000).")
    p.add_argument("--eval-size", type=int, default=1000, help="Test subset for the per-epoch curves (0: all).")
    p.add_argument("--epochs", type=int, default=10, help="The large net's full schedule (and net 1/2's).")
    p.add_argument("--depth", type=int, default=10)
    p.add_argument("--small-width", type=float, default=0.5, help="WRN widen factor of the small nets.")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default).")
    args = p.parse_args(argv)
    sweep_budgets = [float(b) for b in args.sweep_budgets.split(",") if b.strip()]
    args.out = args.out or ROOT / "runs" / args.name
    args.results = args.results or ROOT / "bench" / "results" / args.name
    try:
        if args.report:
            print(report(args.results, args.budget, sweep_budgets))
            return 0
        base = yaml.safe_load(args.base.read_text()) if args.base else default_base(args)
        arms = arms_for(base, args.only or ["table1", "table4", "table2", "sweep"], list(range(args.seeds)),
                        args.budget, sweep_budgets, args.out.resolve())
        for arm in arms:  # every recipe is checked before the first arm runs
            recipe_from_dict(arm.recipe)
        command = " ".join(["python bench/growth_table.py", *(argv if argv is not None else sys.argv[1:])])
        log(f"{len(arms)} arms; results in {args.results}")
        run_arms(arms, args.out.resolve(), args.results, command, args.name)
        print(report(args.results, args.budget, sweep_budgets))
    except MgtoolError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
