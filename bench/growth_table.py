"""The paper's Tables 1, 2 and 4 and Fig. 3a, on real Fashion-MNIST, on a CPU.

    python bench/growth_table.py --only table1          # then table4, table2 (or nothing: all three)
    python bench/growth_table.py --report               # tables from what has run so far

Setting (default, sized for about 2 hours on 2 CPU cores; every figure is printed with it):
WRN-10 with BatchNorm before each block only (``norm=block-input``, the paper's CIFAR
setting), small = widen factor 0.5 with an 8-channel stem, large = widen 1 with a
16-channel stem (exactly two small nets grown by g=2); a seeded random 10,000-image
subset of the Fashion-MNIST training set, a 1,000-image subset of the test set for the
per-epoch curves, the full 10,000-image test set for every reported accuracy. The large
net's full schedule is 10 epochs (cosine, lr 0.1, batch 128); the small nets (net 1,
net 2) train on the same 10-epoch schedule; growth methods get the paper's CIFAR budget
of 0.45X. FLOPs are fvcore's (one per multiply-add, training = 3x forward), counted by
the training engine; FLOPs Norm = FLOPs charged / the Large row's FLOPs, with net 1
*given* (not charged) for every growth method, as in the paper. Budgets are met exactly:
a run gets the next whole number of epochs and stops where its FLOPs run out.

Each run (training, growth, evaluation) is cached under OUT/cache by a hash of its
configuration, and training resumes from the engine's sidecar, so an interrupted part
continues where it stopped. The caches are inputs to the tables, not results themselves.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mgtool.archs import ArchSpec, grow_spec, resolve_spec  # noqa: E402
from mgtool.budget import epochs_for_flops, samples_per_epoch  # noqa: E402
from mgtool.checkpoint import read_meta  # noqa: E402
from mgtool.data import data_config  # noqa: E402
from mgtool.export import export  # noqa: E402
from mgtool.flops import flops_per_training_sample  # noqa: E402
from mgtool.fuse import fuse  # noqa: E402
from mgtool.grow_baselines import grow  # noqa: E402
from mgtool.loading import load_checkpoint  # noqa: E402
from mgtool.scratch import train_plain  # noqa: E402
from mgtool.subset import write_idx_subset  # noqa: E402
from mgtool.train import Runtime, evaluate_checkpoint, finetune, train_config, train_small  # noqa: E402
from mgtool.train.paths import run_paths  # noqa: E402

REFERENCE_BUDGET = 0.45  # net 1, net 2 and Large do not depend on the budget: always keyed at this one
BUDGET_FREE = ("net1", "net2", "large")
GROWTH_POINTS = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
TABLE1 = ("Large", "Large Match", "Small", "Small Match", "Random", "Net2Net",
          "MixtureGrowth w/o fusion", "MixtureGrowth (orthogonal)")
TABLE4 = ("random", "copy", "orthogonal")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Setting:
    train_size: int
    eval_size: int
    test_size: int
    epochs: int
    budget: float
    depth: int
    small_width: float
    batch_size: int
    lr: float
    data_dir: str | None
    device: str

    def key(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("device")  # where it runs does not change what is computed (up to numerics)
        d.pop("data_dir")
        return d


class _Lock:
    """An exclusive lock file per run, so several workers (``--reverse``) share one cache.

    Entering yields True when this process holds it; False when another process held it
    and the run's record appeared meanwhile (the caller then reads the record)."""

    def __init__(self, path: Path):
        self.path, self.held = path, False

    def __enter__(self) -> bool:
        record = self.path.with_suffix(".json")
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                self.held = True
                return True
            except FileExistsError:
                try:
                    pid = int(self.path.read_text() or "0")
                    os.kill(pid, 0)
                except (ValueError, ProcessLookupError, FileNotFoundError):
                    self.path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                except PermissionError:
                    pass
                if record.exists():
                    return False
                time.sleep(5)

    def __exit__(self, *exc: object) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)


class Bench:
    def __init__(self, setting: Setting, out: Path):
        self.s, self.out = setting, out
        (out / "cache").mkdir(parents=True, exist_ok=True)
        (out / "ckpt").mkdir(parents=True, exist_ok=True)
        source = data_config("fashion-mnist", setting.data_dir)
        folder = write_idx_subset(source, out / "data", train_size=setting.train_size,
                                  test_size=setting.eval_size, seed=0)
        self.train_data = data_config("fashion-mnist", folder)
        self.test_data = source if setting.test_size == 0 else data_config(
            "fashion-mnist", write_idx_subset(source, out / "data-test", train_size=1,
                                              test_size=setting.test_size, seed=1))
        w = setting.small_width
        self.small_spec = resolve_spec(ArchSpec("wrn", w, 10, 1, {"depth": setting.depth, "norm": "block-input",
                                                            "stem_width": round(16 * w)}))
        self.large_spec = grow_spec(self.small_spec, 2)
        self.runtime = Runtime(device=setting.device, quiet=True, loader="device")
        n = setting.train_size or 60000
        self.epoch_samples = samples_per_epoch(n, setting.batch_size)
        self._reference: float | None = None
        self.lookup_only = False  # True: report what is cached, train nothing
        self.reverse = False  # a second worker takes the units in reverse order

    # ------------------------------------------------------------------ caching

    def cached(self, name: str, config: dict[str, Any], fn: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
        setting = self.s.key()
        if name in BUDGET_FREE:
            setting["budget"] = REFERENCE_BUDGET
        full = {"name": name, "setting": setting, **config}
        digest = hashlib.sha256(json.dumps(full, sort_keys=True).encode()).hexdigest()[:10]
        stem = f"{name}-{digest}"
        record = self.out / "cache" / f"{stem}.json"
        if record.exists():
            return json.loads(record.read_text())["result"]
        if self.lookup_only:
            return {"missing": True}
        with _Lock(record.with_suffix(".lock")) as mine:
            if not mine or record.exists():  # another worker ran it meanwhile
                return json.loads(record.read_text())["result"]
            t0 = time.perf_counter()
            result = fn(self.out / "ckpt" / f"{stem}.safetensors")
            result["wall_s"] = time.perf_counter() - t0
            tmp = record.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"config": full, "result": result}, indent=1))
            tmp.replace(record)
        log(f"{name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in result.items() if k in ("top1", "flops_norm", "wall_s",
                                                                         "at_growth_top1", "epochs")))
        return result

    def _fit(self, path: Path, run: Callable[..., Any]) -> None:
        """Run a training (resuming an interrupted one; reusing a finished one)."""
        paths = run_paths(path)
        if paths.state.exists():
            run(resume=True, force=False)
        elif path.exists() and (read_meta(path).training or {}).get("complete"):
            return
        else:
            run(resume=False, force=True)

    def _cfg(self, epochs: int, budget: float, seed: int):
        return train_config("fashion-mnist", epochs=epochs, budget=budget, seed=seed,
                            batch_size=self.s.batch_size, lr=self.s.lr)

    def _eval(self, path: Path) -> float:
        return float(evaluate_checkpoint(path, self.test_data, device=self.s.device)["top1"])

    def _result(self, path: Path, charged: float, given: float = 0.0, **extra: Any) -> dict[str, Any]:
        meta = read_meta(path)
        return {"path": str(path), "top1": self._eval(path), "flops_charged": charged,
                "flops_norm": charged / self.reference(), "training_flops": meta.flops.training,
                "given": given, "curve": self._curve(path), **extra}

    def _curve(self, path: Path) -> list[list[float]]:
        m = run_paths(path).metrics
        if not m.exists():
            return []
        rows = [json.loads(line) for line in m.read_text().splitlines() if line.strip()]
        return [[r["training_flops"], r["test_top1"]] for r in rows]

    def _per_sample(self, path: Path) -> float:
        model, _ = load_checkpoint(path)
        return flops_per_training_sample(model, (1, 28, 28), self.s.batch_size)

    # ------------------------------------------------------------------ runs

    def large(self, seed: int) -> dict[str, Any]:
        def run(path: Path) -> dict[str, Any]:
            self._fit(path, lambda **kw: train_plain(path, self.large_spec, self.train_data,
                                                     self._cfg(self.s.epochs, 1.0, seed), self.runtime, **kw))
            flops = read_meta(path).flops.training
            return {"path": str(path), "top1": self._eval(path), "training_flops": flops,
                    "flops_charged": flops, "flops_norm": flops / self.reference(), "given": 0.0,
                    "curve": self._curve(path)}
        return self.cached("large", {"seed": seed}, run)

    def reference(self) -> float:
        """The Large row's training FLOPs: what the engine charges for the full schedule
        (per-sample FLOPs x samples), the same for every seed, so no run is needed."""
        if self._reference is None:
            from mgtool.archs import build_plain

            with torch.device("cpu"):
                model = build_plain(self.large_spec)
            per_sample = flops_per_training_sample(model, (1, 28, 28), self.s.batch_size)
            self._reference = per_sample * self.epoch_samples * self.s.epochs
        return self._reference

    def target(self) -> float:
        return self.s.budget * self.reference()

    def net1(self, seed: int) -> dict[str, Any]:
        def run(path: Path) -> dict[str, Any]:
            self._fit(path, lambda **kw: train_small(path, self.train_data, self._cfg(self.s.epochs, 1.0, seed),
                                                     self.runtime, arch="wrn", width=self.small_spec.width,
                                                     options=self.small_spec.options, **kw))
            return self._result(path, read_meta(path).flops.training)
        return self.cached("net1", {"seed": seed}, run)

    def net2(self, seed: int) -> dict[str, Any]:
        """Net 2 on net 1's full schedule, with a copy after every epoch (the growth points)."""
        rt = Runtime(device=self.s.device, quiet=True, loader="device", keep_every=1)

        def run(path: Path) -> dict[str, Any]:
            net1 = Path(self.net1(seed)["path"])
            self._fit(path, lambda **kw: train_small(path, self.train_data,
                                                     self._cfg(self.s.epochs, 1.0, seed + 1000), rt,
                                                     like=net1, **kw))
            return self._result(path, read_meta(path).flops.training)
        return self.cached("net2", {"seed": seed}, run)

    def net2_at(self, seed: int, point: float) -> Path:
        path = Path(self.net2(seed)["path"])
        epoch = point * self.s.epochs
        if abs(epoch - round(epoch)) > 1e-9:
            raise SystemExit(f"growth point {point} x {self.s.epochs} epochs is not a whole epoch; "
                             "use --epochs 10 (or a multiple)")
        return run_paths(path).epoch(round(epoch))

    def small_match(self, seed: int) -> dict[str, Any]:
        def run(path: Path) -> dict[str, Any]:
            probe = Path(self.net1(seed)["path"])
            epochs, budget = epochs_for_flops(self.target(), self._per_sample(probe), self.epoch_samples)
            self._fit(path, lambda **kw: train_small(path, self.train_data, self._cfg(epochs, budget, seed),
                                                     self.runtime, arch="wrn", width=self.small_spec.width,
                                                     options=self.small_spec.options, **kw))
            return self._result(path, read_meta(path).flops.training, epochs=epochs, budget=budget)
        return self.cached("small-match", {"seed": seed}, run)

    def large_match(self, seed: int) -> dict[str, Any]:
        def run(path: Path) -> dict[str, Any]:
            probe = Path(self.large(seed)["path"])
            epochs, budget = epochs_for_flops(self.target(), self._per_sample(probe), self.epoch_samples)
            self._fit(path, lambda **kw: train_plain(path, self.large_spec, self.train_data,
                                                     self._cfg(epochs, budget, seed), self.runtime, **kw))
            return self._result(path, read_meta(path).flops.training, epochs=epochs, budget=budget)
        return self.cached("large-match", {"seed": seed}, run)

    def _finetune_grown(self, grown: Path, path: Path, charged_before: float, given: float,
                        seed: int) -> dict[str, Any]:
        """Fine-tune a grown net with what is left of the budget; report accuracy at growth too."""
        at_growth = self._eval(grown)
        epochs, budget = epochs_for_flops(self.target() - charged_before, self._per_sample(grown),
                                          self.epoch_samples)
        self._fit(path, lambda **kw: finetune(grown, path, self.train_data, self._cfg(epochs, budget, seed),
                                              self.runtime, **kw))
        charged = read_meta(path).flops.training - given
        return self._result(path, charged, given, at_growth_top1=at_growth, epochs=epochs, budget=budget,
                            growth_flops_norm=charged_before / self.reference())

    def baseline(self, seed: int, method: str) -> dict[str, Any]:
        def run(path: Path) -> dict[str, Any]:
            net1 = Path(self.net1(seed)["path"])
            plain = path.with_name(path.stem + ".net1-plain.safetensors")
            grown = path.with_name(path.stem + ".grown.safetensors")
            export(net1, plain, force=True)
            grow(plain, grown, method=method, factor=2, seed=seed, force=True)
            given = read_meta(net1).flops.training
            return self._finetune_grown(grown, path, 0.0, given, seed)
        return self.cached(f"grow-{method}", {"seed": seed}, run)

    def mixturegrowth(self, seed: int, *, init: str = "orthogonal", point: float | None = 1.0) -> dict[str, Any]:
        """``point`` None: without fusion (net 1 alone); else fused with net 2 at that growth point."""
        def run(path: Path) -> dict[str, Any]:
            net1 = Path(self.net1(seed)["path"])
            net2 = self.net2_at(seed, point) if point is not None else None
            grown = path.with_name(path.stem + ".grown.safetensors")
            sources = [net1] if net2 is None else [net1, net2]
            fuse(sources, grown, init=init, factor=2, seed=seed, force=True)
            meta = read_meta(grown)
            charged_before = meta.flops.training - meta.flops.given
            return self._finetune_grown(grown, path, charged_before, meta.flops.given, seed)
        name = "mg-nofusion" if point is None else "mg"
        return self.cached(name, {"seed": seed, "init": init, "point": point}, run)

    # ------------------------------------------------------------------ tables

    def _in_order(self, units: dict[str, Callable[[], dict[str, Any]]]) -> dict[str, dict[str, Any]]:
        """Run the units (reversed for a ``--reverse`` worker, so two workers meet in the middle)."""
        names = list(units)
        done = {name: units[name]() for name in (names[::-1] if self.reverse else names)}
        return {name: done[name] for name in names}

    def table1(self, seed: int) -> dict[str, dict[str, Any]]:
        return self._in_order({
            "Large": lambda: self.large(seed),
            "Large Match": lambda: self.large_match(seed),
            "Small": lambda: self.net1(seed),
            "Small Match": lambda: self.small_match(seed),
            "Random": lambda: self.baseline(seed, "random"),
            "Net2Net": lambda: self.baseline(seed, "net2net"),
            "MixtureGrowth w/o fusion": lambda: self.mixturegrowth(seed, point=None),
            "MixtureGrowth (orthogonal)": lambda: self.mixturegrowth(seed),
        })

    def table4(self, seed: int) -> dict[str, dict[str, Any]]:
        return self._in_order({init: (lambda init=init: self.mixturegrowth(seed, init=init)) for init in TABLE4})

    def table2(self, seed: int) -> dict[str, dict[str, Any]]:
        units: dict[str, Callable[[], dict[str, Any]]] = {
            "0.0 (w/o fusion)": lambda: self.mixturegrowth(seed, point=None)}
        units.update({f"{p:.1f}": (lambda p=p: self.mixturegrowth(seed, point=p)) for p in GROWTH_POINTS})
        return self._in_order(units)


# ---------------------------------------------------------------------- reporting


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(values: list[float], pct: bool = True) -> str:
    m, s = mean_std(values)
    if math.isnan(m):
        return "not run"
    return f"{100 * m:.2f} ± {100 * s:.2f}" if pct else f"{m:.3f}"


def collect(bench: Bench, table: str, seeds: list[int]) -> dict[str, list[dict[str, Any]]]:
    """Rows of a table over seeds, from the caches only (nothing trains)."""
    bench.lookup_only, reverse, bench.reverse = True, bench.reverse, False
    rows: dict[str, list[dict[str, Any]]] = {}
    for seed in seeds:
        for name, res in getattr(bench, table)(seed).items():
            rows.setdefault(name, []).append(res)
    bench.lookup_only, bench.reverse = False, reverse
    return rows


def markdown(title: str, rows: dict[str, list[dict[str, Any]]], extra: str | None = None) -> str:
    head = f"| {title} | top-1 % (mean ± std) | seeds | FLOPs Norm |"
    sep = "|---|---|---|---|"
    if extra:
        head += f" {extra} |"
        sep += "---|"
    lines = [head, sep]
    for name, results in rows.items():
        ok = [r for r in results if not r.get("missing")]
        line = f"| {name} | {fmt([r['top1'] for r in ok])} | {len(ok)} | " + (
            f"{statistics.fmean(r['flops_norm'] for r in ok):.3f}X |" if ok else "- |")
        if extra:
            vals = [r["at_growth_top1"] for r in ok if "at_growth_top1" in r]
            line += f" {fmt(vals)} |" if vals else " - |"
        lines.append(line)
    return "\n".join(lines)


def plot(by_budget: dict[float, dict[str, list[dict[str, Any]]]], path: Path) -> bool:
    """Fig. 3a analogue: each method's final accuracy (mean ± std over seeds) at each budget."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log("matplotlib is not installed (pip install 'mgtool[plots]'): no PNG")
        return False
    fig = Figure(figsize=(7.5, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    markers = "osD^v<>ph*"
    methods = list(next(iter(by_budget.values())))
    for i, name in enumerate(methods):
        xs, ys, es, n = [], [], [], 0
        for rows in by_budget.values():
            ok = [r for r in rows.get(name, []) if not r.get("missing")]
            if not ok:
                continue
            x = statistics.fmean(r["flops_norm"] for r in ok)
            if any(abs(x - x0) < 1e-3 for x0 in xs):  # Large and Small are the same at every budget
                continue
            m, sd = mean_std([100 * r["top1"] for r in ok])
            xs.append(x)
            ys.append(m)
            es.append(sd)
            n = max(n, len(ok))
        if not xs:
            continue
        order = sorted(range(len(xs)), key=xs.__getitem__)
        ax.errorbar([xs[k] for k in order], [ys[k] for k in order], yerr=[es[k] for k in order],
                    fmt=markers[i % len(markers)] + "-", color=f"C{i % 10}", capsize=3, lw=1, ms=5,
                    label=f"{name} ({n} seeds)")
    large = [r for rows in by_budget.values() for r in rows.get("Large", []) if not r.get("missing")]
    if large:
        ax.axhline(statistics.fmean(100 * r["top1"] for r in large), ls="--", color="gray", lw=0.8)
    ax.set_xlabel("training FLOPs Norm (net 1 given; 1.0X = Large trained from scratch, full schedule)")
    ax.set_ylabel("top-1 on the Fashion-MNIST test set (%)")
    ax.set_title("Accuracy vs training FLOPs (paper Fig. 3a analogue); mean ± std over seeds", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    return True


def sweep_markdown(by_budget: dict[float, dict[str, list[dict[str, Any]]]]) -> str:
    budgets = sorted(by_budget)
    lines = ["| Method | " + " | ".join(f"budget {b:g}X" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    for name in by_budget[budgets[0]]:
        cells = []
        for b in budgets:
            ok = [r for r in by_budget[b].get(name, []) if not r.get("missing")]
            cells.append(f"{fmt([r['top1'] for r in ok])} ({len(ok)}; "
                         f"{statistics.fmean(r['flops_norm'] for r in ok):.2f}X)" if ok else "not run")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "growth_table")
    p.add_argument("--only", choices=("table1", "table2", "table4", "sweep"), action="append",
                   help="Run only this part (repeatable). Default: all four.")
    p.add_argument("--sweep-budgets", default="0.3,0.6",
                   help="Further budgets for the Table 1 methods (the 'sweep' part; Fig. 3a).")
    p.add_argument("--report", action="store_true", help="Only print the tables of what is cached.")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--reverse", action="store_true",
                   help="Take seeds and runs in reverse order: a second worker started with it shares the work.")
    p.add_argument("--train-size", type=int, default=10000, help="Training subset (0: all 60,000).")
    p.add_argument("--eval-size", type=int, default=1000, help="Test subset for the per-epoch curves.")
    p.add_argument("--test-size", type=int, default=0, help="Test images for the reported accuracy (0: all).")
    p.add_argument("--epochs", type=int, default=10, help="The large net's full schedule (and net 1/2's).")
    p.add_argument("--budget", type=float, default=0.45, help="FLOPs Norm of every growth method.")
    p.add_argument("--depth", type=int, default=10)
    p.add_argument("--small-width", type=float, default=0.5, help="WRN widen factor of the small nets.")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default).")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    setting = Setting(args.train_size, args.eval_size, args.test_size, args.epochs, args.budget, args.depth,
                      args.small_width, args.batch_size, args.lr, args.data_dir, args.device)
    bench = Bench(setting, args.out)
    bench.reverse = args.reverse
    parts = args.only or ["table1", "table4", "table2", "sweep"]
    seeds = list(range(args.seeds))
    order = seeds[::-1] if args.reverse else seeds
    t0 = time.perf_counter()
    log(f"setting {json.dumps(setting.key())}; small {bench.small_spec.describe()}, "
        f"large {bench.large_spec.describe()}; "
        f"threads {torch.get_num_threads()}")
    report: dict[str, Any] = {"setting": setting.key(), "small": bench.small_spec.to_dict(),
                              "large": bench.large_spec.to_dict(), "tables": {}}
    texts = []
    for part in ("table1", "table4", "table2"):
        if part not in parts:
            continue
        if not args.report:
            for seed in order:
                log(f"{part}: seed {seed}")
                getattr(bench, part)(seed)
        rows = collect(bench, part, seeds)
        report["tables"][part] = {k: [{kk: vv for kk, vv in r.items() if kk != "curve"} for r in v]
                                  for k, v in rows.items()}
        title = {"table1": "Method", "table4": "Coefficient init", "table2": "Net 2 training (growth point)"}[part]
        text = markdown(title, rows, extra="top-1 at growth" if part != "table1" else None)
        texts.append(f"### {part}\n\n{text}\n")
    by_budget = {setting.budget: collect(bench, "table1", seeds)}
    for budget in (float(b) for b in args.sweep_budgets.split(",") if b.strip()):
        other = Bench(replace(setting, budget=budget), args.out)
        other.reverse = args.reverse
        if "sweep" in parts and not args.report:
            for seed in order:
                log(f"sweep (budget {budget:g}X): seed {seed}")
                other.table1(seed)
        by_budget[budget] = collect(other, "table1", seeds)
    report["tables"]["sweep"] = {f"{b:g}": {k: [{kk: vv for kk, vv in r.items() if kk != "curve"} for r in v]
                                            for k, v in rows.items()} for b, rows in by_budget.items()}
    texts.append(f"### sweep (Table 1 methods at several budgets)\n\n{sweep_markdown(by_budget)}\n")
    plot(by_budget, args.out / "fig3a.png")
    wall = time.perf_counter() - t0
    report["wall_s"] = wall
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    (args.out / "tables.md").write_text("\n".join(texts))
    print("\n".join(texts))
    log(f"done in {wall / 60:.1f} min; {args.out / 'tables.md'}, {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
