"""Issue 14 item 6: growing a ViT on real Fashion-MNIST, CPU, one seed.

    python bench/vit_growth.py                 # run (resumable: a stage whose JSON exists is skipped)
    python bench/vit_growth.py --report        # the table, from bench/results/vit_growth/*.json alone

The small preset at dim 64 (depth 4, 2 heads, patch 4 on 28x28) grown to dim 128, every run
with the same AdamW + cosine recipe (recipes/fashion-mnist-vit-cpu.yaml's settings: lr 1e-3, weight
decay 0.05; batch 32 here) on a seeded 5,000-image training subset, evaluated on a seeded 1,000-image
test subset; small nets 3 epochs, fine-tune 1 epoch (about 20 minutes on a loaded 2-core machine):

* mixturegrowth: two dim-64 template-mixing nets (seeds 0 and 1), ``fuse --init orthogonal``,
  fine-tuned; top-1 at growth is also measured for ``--init random``, ``copy`` and ``zero``, with
  each grown net's relative max logit difference to the sum of the two small nets (LayerNorm
  over the joined stream: not 0 for ViTs, see docs/FORMAT.md);
* ensemble: the sum of the two small nets' logits (no training; what zero-init fusion of a
  BatchNorm CNN computes exactly);
* clone: net A exported, ``grow --method clone`` (function-preserving), fine-tuned to the same
  total training FLOPs as mixturegrowth;
* scratch: a dim-128 template-mixing ViT trained from scratch with a complete schedule
  (``--budget``) of the same total training FLOPs.

Each finished stage writes one JSON into the results folder. Runs the CLI as subprocesses,
one torch thread each.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "vit_growth"
SOURCE = Path("/usr/share/datasets/fashion-mnist")
OPTS = {"embed_dim": 64, "depth": 4, "num_heads": 2, "patch_size": 4, "img_size": 28}
BATCH = 32  # more steps in a short budget than the recipe's 128 (ViTs from scratch need steps)
TRAIN = ["--optimizer", "adamw", "--lr", "1e-3", "--wd", "0.05", "--batch-size", str(BATCH)]
INITS = ("orthogonal", "random", "copy", "zero")
TRAIN_SIZE, TEST_SIZE = 5_000, 1_000
SMALL_EPOCHS, FINETUNE_EPOCHS, REFERENCE_EPOCHS = 3, 1, 10


def mgtool(*args: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "mgtool", *args, "--json"]
    print("$ mgtool " + " ".join(args), file=sys.stderr, flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if run.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}")
    return json.loads(run.stdout)


def stage(name: str, fn) -> dict[str, Any]:
    path = RESULTS / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    start = time.perf_counter()
    out = fn()
    out.update(stage=name, wall_s=round(time.perf_counter() - start, 1), machine=machine())
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    return out


def machine() -> str:
    import torch

    return f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, 1 thread"


def logit_gap(small: list[Path], grown: Path, data_dir: Path) -> float:
    """Max |grown - (a + b)| over the test subset, relative to max |a + b|."""
    import torch

    from mgtool import load
    from mgtool.data import data_config, eval_batches

    torch.set_num_threads(1)
    nets = [load(p).eval() for p in small]
    big = load(grown).eval()
    worst, scale = 0.0, 0.0
    with torch.no_grad():
        for x, _ in eval_batches(data_config("fashion-mnist", data_dir), "test", limit=1000):
            ref = sum(n(x) for n in nets)
            worst = max(worst, float((big(x) - ref).abs().max()))
            scale = max(scale, float(ref.abs().max()))
    return worst / scale


def ensemble_top1(small: list[Path], data_dir: Path) -> float:
    """Top-1 of the sum of the small nets' logits (what zero-init fusion computes for a BatchNorm CNN)."""
    import torch

    from mgtool import load
    from mgtool.data import data_config, eval_batches

    torch.set_num_threads(1)
    nets = [load(p).eval() for p in small]
    right = total = 0
    with torch.no_grad():
        for x, y in eval_batches(data_config("fashion-mnist", data_dir), "test"):
            right += int((sum(n(x) for n in nets).argmax(1) == y).sum())
            total += len(y)
    return right / total


def run(work: Path) -> None:
    from mgtool import write_subset
    from mgtool.data import data_config

    data = write_subset(data_config("fashion-mnist", SOURCE), work / "data", train_size=TRAIN_SIZE,
                        test_size=TEST_SIZE, seed=0)
    d = ["--data", "fashion-mnist", "--data-dir", str(data), "--device", "cpu", "--workers", "0", "-q"]
    arch = ["--arch", "vit", "--width", "1", *[a for k, v in OPTS.items() for a in ("--opt", f"{k}={v}")]]
    a, b = work / "a.safetensors", work / "b.safetensors"
    small = ["--epochs", str(SMALL_EPOCHS), *TRAIN, *d, "--force"]
    stage("net-a", lambda: mgtool("train-small", *arch, "--seed", "0", *small, "-o", str(a)))
    stage("net-b", lambda: mgtool("train-small", "--like", str(a), "--seed", "1", *small, "-o", str(b)))
    for init in INITS:
        grown = work / f"mg-{init}.safetensors"

        def growth(init: str = init, grown: Path = grown) -> dict[str, Any]:
            fused = mgtool("fuse", str(a), str(b), "--init", init, "-o", str(grown), "--force")
            top1 = mgtool("eval", str(grown), *d[:4])["top1"]
            return {"init": init, "top1_at_growth": top1, "training_flops": fused["flops"]["training"],
                    "relative_logit_gap_to_sum": logit_gap([a, b], grown, data)}
        stage(f"growth-{init}", growth)
    stage("ensemble", lambda: {"test_top1": ensemble_top1([a, b], data), "training_flops": 2 * json.loads(
        (RESULTS / "net-a.json").read_text())["training_flops"]})
    mg_out = work / "mg.safetensors"
    mg = stage("mixturegrowth", lambda: mgtool("finetune", str(work / "mg-orthogonal.safetensors"), "--epochs",
                                                str(FINETUNE_EPOCHS), *TRAIN, *d, "--force", "-o", str(mg_out)))
    budget_flops = mg["training_flops"]

    def clone() -> dict[str, Any]:
        plain, wide = work / "a.plain.safetensors", work / "clone.safetensors"
        mgtool("export", str(a), "-o", str(plain), "--force")
        grown = mgtool("grow", str(plain), "--method", "clone", "-o", str(wide), "--force")
        top1 = mgtool("eval", str(wide), *d[:4])["top1"]
        small_flops = json.loads((RESULTS / "net-a.json").read_text())["training_flops"]
        epoch = epoch_flops(wide)
        epochs = max(1, round((budget_flops - small_flops) / epoch))
        out = mgtool("finetune", str(wide), "--epochs", str(epochs), *TRAIN, *d, "--force",
                     "-o", str(work / "clone-ft.safetensors"))
        return {**out, "top1_at_growth": top1, "verify": grown.get("verify"), "finetune_epochs": epochs}
    stage("clone", clone)

    def scratch() -> dict[str, Any]:
        fresh = work / "scratch0.safetensors"
        mgtool("train-small", *arch[:2], "--width", "2", *arch[4:], "--epochs", "0", *d, "--force", "-o", str(fresh))
        budget = min(1.0, budget_flops / (REFERENCE_EPOCHS * epoch_flops(fresh)))
        out = mgtool("train-small", *arch[:2], "--width", "2", *arch[4:], "--seed", "2", "--epochs",
                     str(REFERENCE_EPOCHS), "--budget", f"{budget:.4f}", *TRAIN, *d, "--force",
                     "-o", str(work / "scratch.safetensors"))
        return {**out, "budget": round(budget, 4)}
    stage("scratch", scratch)


def epoch_flops(path: Path) -> float:
    """Training FLOPs of one epoch over the training subset, as the trainer counts them."""
    from mgtool import flops_per_training_sample, load

    return flops_per_training_sample(load(path), (1, OPTS["img_size"], OPTS["img_size"]), BATCH) * TRAIN_SIZE


def report() -> str:
    rows = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    lines = [f"| run | top-1 ({TEST_SIZE:,} test images) | training FLOPs | top-1 at growth | wall s |",
             "|---|---|---|---|---|"]
    for name in ("net-a", "net-b", "ensemble", "mixturegrowth", "clone", "scratch"):
        r = rows.get(name)
        if r is None:
            continue
        at = f"{r['top1_at_growth']:.2%}" if "top1_at_growth" in r else ""
        if name == "mixturegrowth" and "growth-orthogonal" in rows:
            at = f"{rows['growth-orthogonal']['top1_at_growth']:.2%}"
        lines.append(f"| {name} | {r['test_top1']:.2%} | {r['training_flops']:.3g} | {at} | {r['wall_s']:.0f} |")
    lines += ["", "| fuse --init | top-1 at growth | max logit gap to the sum of A and B (relative) |",
              "|---|---|---|"]
    for init in INITS:
        r = rows.get(f"growth-{init}")
        if r is not None:
            lines.append(f"| {init} | {r['top1_at_growth']:.2%} | {r['relative_logit_gap_to_sum']:.3g} |")
    machines = sorted({r["machine"] for r in rows.values()})
    return "\n".join(lines + ["", f"Machine: {'; '.join(machines)}"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--report", action="store_true", help="print the table from the result files only")
    p.add_argument("--smoke", action="store_true", help="a seconds-long run of every stage (results not kept)")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "vit_growth", help="checkpoints and data subset")
    args = p.parse_args()
    if args.smoke:
        global RESULTS, TRAIN_SIZE, TEST_SIZE, SMALL_EPOCHS, FINETUNE_EPOCHS
        RESULTS, args.work = args.work / "smoke-results", args.work / "smoke"
        TRAIN_SIZE, TEST_SIZE, SMALL_EPOCHS, FINETUNE_EPOCHS = 512, 256, 1, 1
    if not args.report:
        run(args.work)
    print(report())


if __name__ == "__main__":
    main()
