"""Why do small template-mixing nets swing between epochs? (issue: growth protocol, item 6)

    python bench/stability.py                 # every arm, seed 0; one JSON per finished run
    python bench/stability.py --report        # the table, from bench/results/stability/*.json alone

Setting of the pilot: full Fashion-MNIST (60,000 training images, 10,000 test), WRN-10 x0.25
(stem 4) with BatchNorm before blocks only, SGD lr 0.1 cosine, batch 128, 15 epochs, 1 thread.
Arms (fixed before any run): the plain net of the same width; the template-mixing net with
coefficient weight decay 5e-4 (mgtool before this change); the template-mixing net with
coefficient weight decay 0 (the authors' code, mgtool's new default).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from mgtool import train_plain
from mgtool.archs import ArchSpec, resolve_spec
from mgtool.data import data_config
from mgtool.train import Runtime, run_paths, train_config, train_small

ROOT = Path(__file__).resolve().parents[1]

RESULTS = ROOT / "bench" / "results" / "stability"
ARMS = {"plain": {}, "tm-coefwd-5e-4": {"coef_weight_decay": 5e-4}, "tm-coefwd-0": {"coef_weight_decay": 0.0}}


def run(arm: str, seed: int, epochs: int, work: Path) -> dict:
    spec = resolve_spec(ArchSpec("wrn", 0.25, 10, 1, {"depth": 10, "norm": "block-input", "stem_width": 4}))
    data = data_config("fashion-mnist")
    out = work / f"{arm}-s{seed}.safetensors"
    cfg = train_config("fashion-mnist", epochs=epochs, seed=seed, **ARMS[arm])
    rt = Runtime(device="cpu", quiet=True)
    t0 = time.perf_counter()
    if arm == "plain":
        train_plain(out, spec, data, cfg, rt, force=True)
    else:
        train_small(out, data, cfg, rt, arch="wrn", width=spec.width, options=spec.options, force=True)
    rows = [json.loads(line) for line in run_paths(out).metrics.read_text().splitlines()]
    return {"arm": arm, "seed": seed, "epochs": epochs, "spec": spec.to_dict(), "recipe": cfg.to_dict(),
            "test_top1": [r["test_top1"] for r in rows], "train_loss": [r["train_loss"] for r in rows],
            "wall_s": time.perf_counter() - t0, "torch": torch.__version__, "threads": torch.get_num_threads(),
            "machine": platform.node(), "command": "python bench/stability.py"}


def report() -> str:
    rows = [json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))]
    lines = ["| arm | seed | test top-1 per epoch (%) | final | largest drop between epochs |", "|---|---|---|---|---|"]
    for r in rows:
        acc = [100 * a for a in r["test_top1"]]
        drop = max((a - b for a, b in zip(acc, acc[1:])), default=0.0)
        lines.append(f"| {r['arm']} | {r['seed']} | {' '.join(f'{a:.1f}' for a in acc)} | {acc[-1]:.2f} | "
                     f"{max(drop, 0):.1f} |")
    if rows:
        lines.append(f"\n{len(rows)} runs, {statistics.fmean(r['wall_s'] for r in rows) / 60:.1f} min each on average")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--report", action="store_true")
    p.add_argument("--arms", default=",".join(ARMS))
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "stability")
    args = p.parse_args()
    if not args.report:
        torch.set_num_threads(1)
        args.work.mkdir(parents=True, exist_ok=True)
        RESULTS.mkdir(parents=True, exist_ok=True)
        for seed in (int(s) for s in args.seeds.split(",")):
            for arm in args.arms.split(","):
                path = RESULTS / f"{arm}-s{seed}.json"
                if path.exists():
                    continue
                result = run(arm, seed, args.epochs, args.work)
                path.write_text(json.dumps(result, indent=1) + "\n")
                print(f"{arm} seed {seed}: final {result['test_top1'][-1]:.4f} in {result['wall_s']:.0f}s", flush=True)
    print(report())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
