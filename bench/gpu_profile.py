"""Template mixing against plain training on a GPU, and weight generation against its bandwidth limit.

WRN-28-10 at 32x32, bf16 autocast + channels_last (as ``bench/train_throughput.py``).

Default run (eager): one training step (CUDA events, median of rounds) of ``plain``, ``mgtool``
(the Triton kernels where they run: ``--mixing-kernel auto``), ``mgtool-torch`` (the torch path)
and ``einsum-before`` (the generation before issue 13), with SGD ``foreach`` and ``fused``; then
weight generation alone (forward, forward + backward) beside its bandwidth limit: the bytes the
generation must move (templates read, weights written in bf16; backward: weight gradients and
templates read, template gradients written) over the card's peak memory bandwidth (a table by
device name, or ``--peak-tbs``), both printed; then ``torch.profiler`` tables of the top CUDA
kernels of the ``mgtool`` and ``mgtool-torch`` steps.

``--table``: the step ratio (template mixing / plain, in speed) for eager, ``torch.compile`` and
``torch.compile(mode="reduce-overhead")`` (CUDA graphs) at each ``--batches`` size; rows are
written to ``--json-out`` as they finish, so a run cut off by a time limit keeps what it measured.
``--compile`` (as before) times plain and mgtool under ``torch.compile`` only.

    PYTHONPATH=. python bench/gpu_profile.py [--json-out F]            # run by bench/gpu_issue27.sh
    PYTHONPATH=. python bench/gpu_profile.py --table --json-out F
    PYTHONPATH=. python bench/gpu_profile.py --smoke [--table]         # tiny sizes on the CPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from overhead import EinsumMixingNet
from torch import nn
from torch.profiler import ProfilerActivity, profile

from mgtool import TemplateMixingNet, fresh_template_mixing
from mgtool.archs import ArchSpec, build_plain


def log(msg: str) -> None:
    print(msg, flush=True)


class Timer:
    def __init__(self, device: torch.device):
        self.device = device

    def __call__(self, fn: Callable[[], None], steps: int) -> float:
        """Seconds per call of ``steps`` calls."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(steps):
                fn()
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / 1000 / steps
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        return (time.perf_counter() - t0) / steps


# Peak memory bandwidth, TB/s, by device name (the more specific names first); --peak-tbs overrides.
PEAK_TBS = {"H200": 4.8, "H100 NVL": 3.9, "H100 PCIe": 2.0, "H100": 3.35, "A100-SXM4-80GB": 2.039,
            "A100 80GB PCIe": 1.935, "A100": 1.555, "L4": 0.3}
MODES = {"eager": None, "compile": "default", "cudagraphs": "reduce-overhead"}  # torch.compile mode


def peak_bandwidth(name: str, override: float | None) -> float | None:
    """TB/s of the card called ``name`` (None if unknown and not given)."""
    if override:
        return override
    return next((v for k, v in PEAK_TBS.items() if k in name), None)


def generation_bytes(model: TemplateMixingNet, weight_bytes: int = 2) -> tuple[int, int]:
    """The least memory traffic of generating every weight (forward) and of its backward: fp32
    templates read once per group, weights written (and their gradients read) in bf16, template
    gradients written in fp32. Coefficients are a few hundred bytes and not counted."""
    forward = backward = 0
    for _, shape, _ in model._groups:
        templates = shape.rows * shape.k * shape.tile_numel * 4
        weights = shape.layers * shape.rows * shape.cols * shape.tile_numel * weight_bytes
        forward += templates + weights
        backward += weights + 2 * templates
    return forward, backward


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sgd: str, mode: str | None = None
              ) -> Callable[[], None]:
    """One training step; ``mode``: None (eager) or a torch.compile mode."""
    flags = {"fused": True} if sgd == "fused" else {"foreach": True} if x.is_cuda else {}
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4, **flags)
    run = model if mode is None else torch.compile(model, mode=mode)
    graphs = mode == "reduce-overhead"

    def step() -> None:
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.is_cuda):
            loss = F.cross_entropy(run(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def kernel_table(step: Callable[[], None], device: torch.device, rows: int) -> str:
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(3):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize()
    averages = prof.key_averages()
    for key in (("self_device_time_total", "self_cuda_time_total") if device.type == "cuda" else ()) \
            + ("self_cpu_time_total",):
        try:
            return averages.table(sort_by=key, row_limit=rows, max_name_column_width=70)
        except Exception:  # older/newer torch name the CUDA column differently
            continue
    return averages.table(row_limit=rows)


def build(spec: ArchSpec, device: torch.device) -> dict[str, nn.Module]:
    """plain, mgtool (--mixing-kernel auto), mgtool-torch and einsum-before, same generated weights."""
    tm = fresh_template_mixing(spec, templates=2, share="pairs", seed=0)
    torch.manual_seed(0)
    models: dict[str, nn.Module] = {"plain": build_plain(spec), "mgtool": tm}
    for key, cls in (("mgtool-torch", TemplateMixingNet), ("einsum-before", EinsumMixingNet)):
        models[key] = cls(build_plain(spec), tm.plan)
        models[key].load_state_dict(tm.state_dict())
    cuda = device.type == "cuda"
    for key, m in models.items():
        m.to(device).train()
        if cuda:
            m.to(memory_format=torch.channels_last)
        if key == "mgtool":
            m.set_mixing_kernel("auto", device, channels_last=cuda)
    return models


def batch(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(size, 3, 32, 32, generator=gen).to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, 10, (size,), generator=gen).to(device)


def generation_section(models: dict[str, nn.Module], device: torch.device, timer: Timer, steps: int,
                       peak_tbs: float | None) -> dict:
    fwd_bytes, bwd_bytes = generation_bytes(models["mgtool"])
    limit = None if peak_tbs is None else ((fwd_bytes / peak_tbs / 1e9), ((fwd_bytes + bwd_bytes) / peak_tbs / 1e9))
    out: dict = {"bytes_forward": fwd_bytes, "bytes_backward": bwd_bytes, "peak_tb_per_s": peak_tbs,
                 "limit_ms": limit}
    log(f"\nweight generation alone (bf16 autocast): {fwd_bytes / 1e6:.1f} MB forward, {bwd_bytes / 1e6:.1f} MB "
        f"backward at least; peak {peak_tbs} TB/s")
    if limit:
        log(f"{'bandwidth limit':<20} forward {limit[0]:7.3f}   forward+backward {limit[1]:7.3f}")
    for key in ("mgtool", "mgtool-torch", "einsum-before"):
        model = models[key]
        layers = [m for m, _, _ in model._mixed]
        params = list(model.parameters())

        def fwd(model=model) -> None:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                model.generate_weights()

        fwd()
        grads = [torch.randn_like(m.weight) for m in layers]

        def fwd_bwd(layers=layers, params=params, grads=grads, fwd=fwd) -> None:
            for q in params:
                q.grad = None
            fwd()
            torch.autograd.backward([m.weight for m in layers], grads)

        timer(fwd_bwd, 3)
        f, fb = timer(fwd, steps) * 1e3, timer(fwd_bwd, steps) * 1e3
        kernel = "einsum" if key == "einsum-before" else model.mixing_kernel
        out[key] = {"kernel": kernel, "forward_ms": f, "forward_backward_ms": fb,
                    "x_limit": [f / limit[0], fb / limit[1]] if limit else None}
        ratio = f"   ({f / limit[0]:.1f}x, {fb / limit[1]:.1f}x the limit)" if limit else ""
        log(f"{key + ' (' + kernel + ')':<20} forward {f:7.3f}   forward+backward {fb:7.3f}{ratio}")
    return out


def table(spec: ArchSpec, device: torch.device, timer: Timer, a: argparse.Namespace, result: dict) -> None:
    """Step ratio (speed, template mixing / plain) per mode and batch; result['table'] grows row by row."""
    modes = ["eager"] if a.smoke else list(MODES)
    rows = result.setdefault("table", [])
    log(f"\n{'mode':<12}{'batch':>6}{'model':>14}{'kernel':>8}{'ms':>9}{'img/s':>9}{'tm/plain':>10}")
    # eager first, then each compiled mode at the smallest batch: a run cut short keeps the acceptance rows
    order = [("eager", size) for size in a.batches] + [(m, size) for size in a.batches for m in modes[1:]]
    for mode, size in order:
        torch._dynamo.reset()
        models = build(spec, device)
        x, y = batch(size, device)
        keys = ("plain", "mgtool", "mgtool-torch") if mode == "eager" else ("plain", "mgtool")
        steps = {k: make_step(models[k], x, y, "fused", MODES[mode]) for k in keys}
        for fn in steps.values():
            timer(fn, 3)  # warm-up: cudnn autotuning, compilation, graph capture
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(a.rounds):
            for k, fn in steps.items():
                times[k].append(timer(fn, a.steps))
        med = {k: statistics.median(v) for k, v in times.items()}
        for k, sec in med.items():
            kernel = getattr(models[k], "mixing_kernel", "-")
            row = {"mode": mode, "batch": size, "model": k, "kernel": kernel, "step_ms": sec * 1e3,
                   "images_per_s": size / sec, "tm_over_plain": med["plain"] / sec}
            rows.append(row)
            log(f"{mode:<12}{size:>6}{k:>14}{kernel:>8}{sec * 1e3:>9.2f}{size / sec:>9.0f}"
                f"{med['plain'] / sec:>10.3f}")
        if a.json_out:
            write(a.json_out, result)
        del models, steps
        if device.type == "cuda":
            torch.cuda.empty_cache()


def write(path: str, result: dict) -> None:
    with open(path, "w") as f:
        json.dump(result, f, indent=1)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny WRN on the CPU (checks the script)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="time plain and mgtool under torch.compile only")
    p.add_argument("--table", action="store_true", help="only the step-ratio table: eager, compile, cudagraphs")
    p.add_argument("--batches", type=int, nargs="+", default=[128, 512], help="batch sizes of --table")
    p.add_argument("--peak-tbs", type=float, default=None, help="peak memory bandwidth, TB/s (default: by name)")
    p.add_argument("--rows", type=int, default=18)
    p.add_argument("--json-out", default=None)
    a = p.parse_args()
    device = torch.device("cpu" if a.smoke or not torch.cuda.is_available() else "cuda")
    if a.smoke:
        a.batch_size, a.steps, a.rounds, a.rows, a.batches = 8, 2, 1, 8, [4, 8]
    spec = ArchSpec("wrn", 1 if a.smoke else 10, 10, 3, {"depth": 10 if a.smoke else 28})
    torch.backends.cudnn.benchmark = True
    timer = Timer(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = peak_bandwidth(name, a.peak_tbs)
    log(f"{spec.describe()} 32x32 bf16+channels_last on {name} (peak {peak} TB/s), torch {torch.__version__}")
    result: dict = {"device": name, "torch": torch.__version__, "peak_tb_per_s": peak, "command": sys.argv}
    if a.table:
        table(spec, device, timer, a, result)
        return 0

    t0 = time.perf_counter()
    models = build(spec, device)
    x, y = batch(a.batch_size, device)
    log(f"models built in {time.perf_counter() - t0:.0f}s; mgtool generates with {models['mgtool'].mixing_kernel}")
    variants: dict[str, Callable[[], None]] = {}
    keys = ("plain", "mgtool") if a.compile else ("plain", "mgtool", "mgtool-torch", "einsum-before")
    for sgd in ("foreach",) if a.compile else ("foreach", "fused"):
        for key in keys:
            variants[f"{key} {sgd}"] = make_step(models[key], x, y, sgd, "default" if a.compile else None)
    for key, fn in variants.items():
        t1 = time.perf_counter()
        timer(fn, 3 if a.compile else 6)  # warm-up: cudnn autotuning, compilation
        log(f"warm {key} ({time.perf_counter() - t1:.0f}s)")
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(a.rounds):
        for key, fn in variants.items():
            times[key].append(timer(fn, a.steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    log(f"\n{'step (' + ('compiled' if a.compile else 'eager') + f'), batch {a.batch_size}':<28}{'ms':>8}"
        f"{'img/s':>9}{'speed vs plain':>16}")
    for key, sec in med.items():
        plain = med[f"plain {key.split()[-1]}"]
        log(f"{key:<28}{sec * 1e3:>8.2f}{a.batch_size / sec:>9.0f}{plain / sec:>16.3f}")
    result.update({"batch": a.batch_size, "compile": a.compile, "mixing_kernel": models["mgtool"].mixing_kernel,
                   "median_step_s": med})
    if not a.compile:
        result["generation"] = generation_section(models, device, timer, a.steps, peak)
        for key in ("mgtool foreach", "mgtool-torch foreach"):
            log(f"\ntorch.profiler: {key} step x3, top CUDA kernels")
            log(kernel_table(variants[key], device, a.rows))
    if a.json_out:
        write(a.json_out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
