"""Real-data check for issue 3: `mgtool train-small` on Fashion-MNIST reaches >= 90% test top-1 on a CPU.

Runs the exact CLI command below as a subprocess (so the figure is what a user gets), times
it, and prints the per-epoch metrics and one JSON summary. Exit code 1 if the target is missed.

    python bench/fashion_mnist_check.py [--epochs 6] [--width 1] [--depth 10] [--threads 1] [--out runs/fmnist]

The data comes from Debian's dataset-fashion-mnist (/usr/share/datasets/fashion-mnist) or --data-dir.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

TARGET = 0.90


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--width", type=float, default=1)
    p.add_argument("--depth", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="torch threads (OMP_NUM_THREADS)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", type=Path, default=Path("runs/fmnist"))
    args = p.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / f"wrn{args.depth}-{args.width:g}.safetensors"
    cmd = ["mgtool", "train-small", "--arch", "wrn", "--width", f"{args.width:g}", "--opt", f"depth={args.depth}",
           "--data", "fashion-mnist", "--epochs", str(args.epochs), "--device", "cpu", "--force", "-o", str(out)]
    if args.data_dir:
        cmd[cmd.index("--epochs"):cmd.index("--epochs")] = ["--data-dir", args.data_dir]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    shown = f"OMP_NUM_THREADS={args.threads} " + shlex.join(cmd)
    print(f"$ {shown}", file=sys.stderr)
    start = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "mgtool", *cmd[1:]], env=env, stdout=sys.stderr)
    wall = time.perf_counter() - start
    if run.returncode != 0:
        print(f"training failed with exit code {run.returncode}", file=sys.stderr)
        return 1
    metrics_path = out.with_name(out.name.removesuffix(".safetensors") + ".metrics.jsonl")
    metrics = [json.loads(line) for line in metrics_path.read_text().splitlines()]
    for m in metrics:
        print(f"epoch {m['epoch']}: test top-1 {m['test_top1']:.4f} loss {m['test_loss']:.4f} "
              f"train {m['images_per_s']:.0f} img/s", file=sys.stderr)
    final = metrics[-1]
    summary = {"command": shown, "epochs": args.epochs, "test_top1": final["test_top1"],
               "test_top5": final["test_top5"], "wall_s": round(wall, 1), "cpus": os.cpu_count(),
               "threads": args.threads, "training_flops": final["training_flops"], "target": TARGET,
               "passed": final["test_top1"] >= TARGET}
    print(json.dumps(summary))
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
