"""Speed and memory of ``mgtool fuse`` (issue 4): the growth step that should cost nothing.

Two cases from the paper: two WRN-28-5 -> WRN-28-10 (norm=block-input, CIFAR-100 head)
and two width-0.5 ResNet-50 -> ResNet-50 (stem=scaled, ImageNet head). The inputs are
random template-mixing nets (``fresh_template_mixing``, t=2, pairs), written once.
Each fuse runs in a fresh Python process that reports:

* ``fuse_s``: wall time of the library call ``mgtool.fuse.fuse`` (read, tile,
  initialise, hash the inputs, write), after imports;
* ``peak_rss_mb`` (the process's VmHWM) and ``rss_after_import_mb``; their
  difference is what fusing costs, and both are given relative to the output file;
* ``cli_s``: the whole ``mgtool fuse`` command, Python start-up included, and
  ``startup_s``: Python start-up plus the imports ``mgtool fuse`` needs, for scale.

A last child fuses with ``--init zero --verify`` and reports the max |logit difference|
between the grown net (new tiles zeroed) and the sum of the two inputs.

    python bench/fuse_speed.py                     # both cases, 3 runs each
    python bench/fuse_speed.py --case wrn-28-5 --runs 1 --json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CASES = {
    "wrn-28-5": ("wrn", 5.0, 100, {"depth": 28, "norm": "block-input"}),
    "resnet50-0.5": ("resnet50", 0.5, 1000, {"stem": "scaled"}),
}


# What `mgtool fuse` imports before it starts working (the CLI imports lazily).
IMPORTS = "import mgtool.cli, mgtool.fuse; from mgtool.archs import family_names; family_names()"


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_rss_mb() -> float:
    # VmHWM, not ru_maxrss: after fork + exec, Linux's ru_maxrss starts at the parent's size.
    with open("/proc/self/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def child(a: str, b: str, out: str, init: str, verify: bool) -> None:
    import torch

    torch.set_num_threads(1)
    from mgtool.archs import family_names
    from mgtool.fuse import fuse

    family_names()  # the registry imports its families (timm) lazily: count that as import
    after_import = _rss_mb()
    start = time.perf_counter()
    result = fuse([a, b], out, init=init, verify=verify, force=True)
    seconds = time.perf_counter() - start
    peak = _peak_rss_mb()
    report = {
        "fuse_s": seconds,
        "rss_after_import_mb": after_import,
        "peak_rss_mb": peak,
        "output_mb": Path(out).stat().st_size / 2**20,
    }
    if verify:
        report["max_abs_logit_diff"] = result.max_abs_logit_diff
        report["logit_scale"] = result.logit_scale
    print(json.dumps(report))


def _make_inputs(case: str, folder: Path) -> tuple[Path, Path]:
    import torch

    from mgtool import CheckpointMeta, fresh_template_mixing, new_provenance, save_checkpoint
    from mgtool.archs import ArchSpec, resolve_spec

    name, width, classes, options = CASES[case]
    spec = resolve_spec(ArchSpec(name, width, classes, 3, options))
    paths = []
    for seed in (1, 2):
        tm = fresh_template_mixing(spec, seed=seed)
        with torch.no_grad():  # non-trivial BN statistics, as after training
            for key, t in tm.state_dict().items():
                if key.endswith("running_var"):
                    t.uniform_(0.5, 2.0)
                elif key.endswith("running_mean"):
                    t.normal_(0, 0.1)
        meta = CheckpointMeta("template-mixing", spec, tm.plan, new_provenance((), ["bench"]))
        paths.append(save_checkpoint(folder / f"{case}.net{seed}.safetensors", tm.state_dict(), meta, force=True))
    return paths[0], paths[1]


def _run_child(a: Path, b: Path, out: Path, init: str, verify: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", str(a), str(b), str(out), "--init", init]
    if verify:
        cmd.append("--verify")
    done = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _wall(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=3, metavar=("A", "B", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--init", default="orthogonal")
    parser.add_argument("--verify", action="store_true")
    args = parser.parse_args()
    if args.child:
        child(*args.child, init=args.init, verify=args.verify)
        return
    mgtool = str(Path(sys.executable).with_name("mgtool"))
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for case in args.case or sorted(CASES):
            a, b = _make_inputs(case, folder)
            out = folder / f"{case}.grown.safetensors"
            runs = [_run_child(a, b, out, args.init, False) for _ in range(args.runs)]
            cli = [_wall([mgtool, "fuse", str(a), str(b), "-o", str(out), "--force"]) for _ in range(args.runs)]
            startup = [_wall([sys.executable, "-c", IMPORTS]) for _ in range(args.runs)]
            check = _run_child(a, b, out, "zero", True)
            size = runs[0]["output_mb"]
            peak = max(r["peak_rss_mb"] for r in runs)
            base = min(r["rss_after_import_mb"] for r in runs)
            results[case] = {
                "input_mb": a.stat().st_size / 2**20,
                "output_mb": size,
                "fuse_s_median": statistics.median(r["fuse_s"] for r in runs),
                "fuse_s_max": max(r["fuse_s"] for r in runs),
                "cli_s_median": statistics.median(cli),
                "startup_s_median": statistics.median(startup),
                "peak_rss_mb": peak,
                "rss_after_import_mb": base,
                "peak_over_output": peak / size,
                "fuse_rss_over_output": (peak - base) / size,
                "zero_init_max_abs_logit_diff": check["max_abs_logit_diff"],
                "zero_init_logit_scale": check["logit_scale"],
            }
    env = {"python": platform.python_version(), "machine": platform.machine(), "cpus": _cpus(), "runs": args.runs}
    if args.json:
        print(json.dumps({"env": env, "cases": results}))
        return
    print(f"# fuse speed, {env}")
    head = (
        "case",
        "in MB",
        "out MB",
        "fuse s",
        "CLI s",
        "start-up s",
        "peak RSS MB",
        "after import MB",
        "peak/out",
        "(peak-import)/out",
        "zero-init max|dlogit| / scale",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for case, r in results.items():
        cells = (
            case,
            f"{r['input_mb']:.0f}",
            f"{r['output_mb']:.0f}",
            f"{r['fuse_s_median']:.2f}",
            f"{r['cli_s_median']:.2f}",
            f"{r['startup_s_median']:.2f}",
            f"{r['peak_rss_mb']:.0f}",
            f"{r['rss_after_import_mb']:.0f}",
            f"{r['peak_over_output']:.2f}",
            f"{r['fuse_rss_over_output']:.2f}",
            f"{r['zero_init_max_abs_logit_diff']:.2g} / {r['zero_init_logit_scale']:.2g}",
        )
        print("| " + " | ".join(cells) + " |")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    main()
