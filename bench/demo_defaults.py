"""Which init scale and post-growth protocol should the demo use? (growth-protocol issue, item 5)

    python bench/demo_defaults.py                # seeds 0-2, every arm; one JSON per finished run
    python bench/demo_defaults.py --report       # the table, from bench/results/demo_defaults/*.json alone
    python bench/demo_defaults.py --amendment-10 # PLAN.md amendment 10: s = 0.1 and fuse's capped rule, landed code

The demo's setting: a seeded 10,000-image subset of Fashion-MNIST (1,000 test images for the
per-epoch lines), two WRN-10 x0.5 (stem 8, BatchNorm before blocks only) trained 5 epochs each
(net 2 seeded net 1's + 1), fused into a WRN-10-1, its BatchNorm statistics re-estimated on 2,048
training images, fine-tuned 1 epoch; every accuracy on the full 10,000-image test set.
Arms (fixed before any run): the new tiles' init (orthogonal at the learned vectors' RMS norm,
mgtool's old default; the unit vector; orthogonal at s = 0.5, 0.25, 0.1; zero) x the
fine-tune (lr 0.1 complete cosine, mgtool's default; the authors' protocol), plus orthogonal
s = 0.25 with lr 0.1 fine-tuned from the un-recalibrated net (what recalibration adds).
Those files come from the code of 2026-11-27 (commits d09078b-3c7e28c). ``--amendment-10`` reruns
s = 0.1 and adds the capped rule (``fuse``'s default since amendment 10), both with lr 0.1, into
bench/results/demo_defaults/amendment10/, each file recording its commit.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from demo_seeds import commit  # the one "commit, +dirty" of the bench's result files

from mgtool import recalibrate_bn, write_subset
from mgtool.data import data_config
from mgtool.demo import find_fashion_mnist
from mgtool.fuse import fuse
from mgtool.train import Runtime, evaluate_checkpoint, finetune, run_paths, train_config, train_small

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "bench" / "results" / "demo_defaults"
INITS = {  # name -> fuse keyword arguments
    "orth-learned": {"init": "orthogonal", "init_norm": "learned"},  # fuse's default until amendment 10
    "orth-unit": {"init": "orthogonal", "init_norm": "unit"},
    "orth-s0.5": {"init": "orthogonal", "init_scale": 0.5},
    "orth-s0.25": {"init": "orthogonal", "init_scale": 0.25},
    "orth-s0.1": {"init": "orthogonal", "init_scale": 0.1},
    "zero": {"init": "zero"},
    "orth-capped": {"init": "orthogonal", "init_norm": "capped"},
}
PROTOCOLS = {"lr0.1": {}, "authors": {"protocol": "authors"}}
ARMS = [(i, p, True) for i in INITS if i != "orth-capped" for p in PROTOCOLS] + [("orth-s0.25", "lr0.1", False)]
AMENDMENT_10 = [("orth-s0.1", "lr0.1", True), ("orth-capped", "lr0.1", True)]  # PLAN.md amendment 10


def arm_name(init: str, protocol: str, recal: bool) -> str:
    return f"{init}-{protocol}" + ("" if recal else "-norecal")


class Bench:
    def __init__(self, work: Path, seed: int):
        self.work, self.seed = work, seed
        work.mkdir(parents=True, exist_ok=True)
        folder = find_fashion_mnist(None, download=False)
        self.full = data_config("fashion-mnist", folder)
        sub = write_subset(self.full, work / "data", train_size=10000, test_size=1000, seed=0)
        self.data = data_config("fashion-mnist", sub)
        self.rt = Runtime(device="cpu", quiet=True)

    def top1(self, path: Path) -> float:
        return float(evaluate_checkpoint(path, self.full, device="cpu")["top1"])

    def nets(self) -> tuple[Path, Path]:
        n1, n2 = self.work / f"net1-s{self.seed}.safetensors", self.work / f"net2-s{self.seed}.safetensors"
        options = {"depth": 10, "norm": "block-input", "stem_width": 8}
        if not n1.exists() or run_paths(n1).state.exists():
            train_small(n1, self.data, train_config("fashion-mnist", epochs=5, seed=self.seed), self.rt, arch="wrn",
                        width=0.5, options=options, force=True)
        if not n2.exists() or run_paths(n2).state.exists():
            train_small(n2, self.data, train_config("fashion-mnist", epochs=5, seed=self.seed + 1), self.rt,
                        like=n1, force=True)
        return n1, n2

    def arm(self, init: str, protocol: str, recal: bool) -> dict:
        t0 = time.perf_counter()
        n1, n2 = self.nets()
        name = arm_name(init, protocol, recal)
        grown = self.work / f"grown-{init}-s{self.seed}.safetensors"
        fused = fuse([n1, n2], grown, seed=self.seed, force=True, **INITS[init])
        bn = self.work / f"grown-{init}-s{self.seed}.bn.safetensors"
        recalibrate_bn(grown, bn, self.data, samples=2048, device="cpu", force=True)
        tuned = self.work / f"{name}-s{self.seed}.ft.safetensors"
        cfg = train_config("fashion-mnist", epochs=1, seed=self.seed, **PROTOCOLS[protocol])
        finetune(bn if recal else grown, tuned, self.data, cfg, self.rt, force=True)
        curve = [json.loads(line) for line in run_paths(tuned).metrics.read_text().splitlines()]
        return {
            "arm": name, "init": init, "protocol": protocol, "recalibrated": recal, "seed": self.seed,
            "tile_ratio": fused.to_dict().get("tile_ratio"),
            "net1_top1": self.top1(n1), "net2_top1": self.top1(n2),
            "at_growth_top1": self.top1(grown), "at_growth_recalibrated_top1": self.top1(bn),
            "final_top1": self.top1(tuned), "curve_subset_top1": [r["test_top1"] for r in curve],
            "lr": [r["lr"] for r in curve], "recipe": cfg.to_dict(), "wall_s": time.perf_counter() - t0,
            "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.node(),
            "commit": commit(), "command": "python bench/demo_defaults.py",
        }


def report(results: Path = RESULTS, arms: list[tuple[str, str, bool]] = ARMS) -> str:
    rows = [json.loads(p.read_text()) for p in sorted(results.glob("*.json"))]
    by_arm: dict[str, list[dict]] = {}
    for r in rows:
        by_arm.setdefault(r["arm"], []).append(r)

    def ms(values: list[float]) -> str:
        if not values:
            return "-"
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{100 * statistics.fmean(values):.2f} ± {100 * sd:.2f}"

    lines = ["| arm | seeds | realised s (median) | at growth | recalibrated | after fine-tune | better small net |",
             "|---|---|---|---|---|---|---|"]
    for name in [arm_name(*a) for a in arms]:
        rs = by_arm.get(name, [])
        if not rs:
            continue
        s = [r["tile_ratio"]["median"] for r in rs if r.get("tile_ratio")]
        lines.append(f"| {name} | {len(rs)} | {statistics.fmean(s):.3f} | " if s else f"| {name} | {len(rs)} | - | ")
        cells = [ms([r["at_growth_top1"] for r in rs]), ms([r["at_growth_recalibrated_top1"] for r in rs]),
                 ms([r["final_top1"] for r in rs]), ms([max(r["net1_top1"], r["net2_top1"]) for r in rs])]
        lines[-1] += " | ".join(cells) + " |"
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report", action="store_true")
    p.add_argument("--amendment-10", action="store_true", help="PLAN.md amendment 10's arms (landed code).")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "demo_defaults")
    args = p.parse_args()
    results, arms = (RESULTS / "amendment10", AMENDMENT_10) if args.amendment_10 else (RESULTS, ARMS)
    if not args.report:
        torch.set_num_threads(1)
        args.work.mkdir(parents=True, exist_ok=True)
        results.mkdir(parents=True, exist_ok=True)
        for seed in (int(s) for s in args.seeds.split(",")):
            bench = Bench(args.work / ("amendment10" if args.amendment_10 else ""), seed)
            for arm in arms:
                path = results / f"{arm_name(*arm)}-s{seed}.json"
                if path.exists():
                    continue
                result = bench.arm(*arm)
                path.write_text(json.dumps(result, indent=1) + "\n")
                print(f"{result['arm']} seed {seed}: growth {result['at_growth_top1']:.4f} / "
                      f"{result['at_growth_recalibrated_top1']:.4f}, final {result['final_top1']:.4f}", flush=True)
    print(report(results, arms))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
