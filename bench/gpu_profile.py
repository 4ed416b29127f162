"""Why template mixing trails plain training on a GPU, and whether the issue-13 changes fix it.

WRN-28-10 at 32x32, batch 128, bf16 autocast + channels_last (as ``bench/train_throughput.py``).
Times one training step (CUDA events, median of rounds) of:

- ``plain``;
- ``einsum-before``: the generation before issue 13 (one einsum per bank group);
- ``mgtool``: the current generation (one matrix product per group and direction);
- ``mgtool-chunked``: the same with the coefficient gradient's long reduction cut into batches
  of ``CHUNK`` values (``mgtool.mixing.REDUCTION_CHUNK``; off by default since it measured slower);

with SGD ``foreach`` (the CUDA default) and ``fused``; then weight generation alone
(forward, forward + backward), and ``torch.profiler`` tables of the top CUDA kernels of the
``mgtool`` and ``einsum-before`` steps. ``--compile`` times plain and mgtool under
``torch.compile`` instead (SGD foreach only).

    PYTHONPATH=. python bench/gpu_profile.py [--json-out F]      # run by bench/gpu_profile.sh
    PYTHONPATH=. python bench/gpu_profile.py --smoke             # tiny sizes on the CPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from overhead import EinsumMixingNet
from torch import nn
from torch.profiler import ProfilerActivity, profile

import mgtool.mixing
from mgtool import fresh_template_mixing
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


CHUNK = 8192  # the chunk size measured before the chunked reduction was turned off


@contextlib.contextmanager
def chunked(chunk: int | None) -> Iterator[None]:
    """``mgtool.mixing.REDUCTION_CHUNK`` set to ``chunk`` inside, restored after (None: as it is)."""
    saved = mgtool.mixing.REDUCTION_CHUNK
    mgtool.mixing.REDUCTION_CHUNK = saved if chunk is None else chunk
    try:
        yield
    finally:
        mgtool.mixing.REDUCTION_CHUNK = saved


def make_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sgd: str, compiled: bool = False,
              chunk: int | None = None) -> Callable[[], None]:
    flags = {"fused": True} if sgd == "fused" else {"foreach": True} if x.is_cuda else {}
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-4, **flags)
    run = torch.compile(model) if compiled else model

    def step() -> None:
        with chunked(chunk):
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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny WRN on the CPU (checks the script)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--compile", action="store_true", help="time plain and mgtool under torch.compile only")
    p.add_argument("--rows", type=int, default=18)
    p.add_argument("--json-out", default=None)
    a = p.parse_args()
    device = torch.device("cpu" if a.smoke or not torch.cuda.is_available() else "cuda")
    if a.smoke:
        a.batch_size, a.steps, a.rounds, a.rows = 8, 2, 1, 8
    spec = ArchSpec("wrn", 1 if a.smoke else 10, 10, 3, {"depth": 10 if a.smoke else 28})
    torch.backends.cudnn.benchmark = True
    timer = Timer(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    log(f"{spec.describe()} 32x32 batch {a.batch_size} bf16+channels_last on {name}, torch {torch.__version__}")

    t0 = time.perf_counter()
    tm = fresh_template_mixing(spec, templates=2, share="pairs", seed=0)
    torch.manual_seed(0)
    models: dict[str, nn.Module] = {"plain": build_plain(spec), "mgtool": tm}
    if not a.compile:
        before = EinsumMixingNet(build_plain(spec), tm.plan)
        before.load_state_dict(tm.state_dict())
        models["einsum-before"] = before
    for m in models.values():
        m.to(device).train()
        if device.type == "cuda":
            m.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch_size, 3, 32, 32, generator=gen).to(device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (a.batch_size,), generator=gen).to(device)
    log(f"models built in {time.perf_counter() - t0:.0f}s")

    variants: dict[str, Callable[[], None]] = {}
    for sgd in ("foreach",) if a.compile else ("foreach", "fused"):
        variants[f"plain {sgd}"] = make_step(models["plain"], x, y, sgd, a.compile)
        variants[f"mgtool {sgd}"] = make_step(models["mgtool"], x, y, sgd, a.compile)
        if not a.compile:
            variants[f"einsum-before {sgd}"] = make_step(models["einsum-before"], x, y, sgd)
            variants[f"mgtool-chunked {sgd}"] = make_step(models["mgtool"], x, y, sgd, chunk=CHUNK)
    for key, fn in variants.items():
        t1 = time.perf_counter()
        timer(fn, 3 if a.compile else 6)  # warm-up: cudnn autotuning, compilation
        log(f"warm {key} ({time.perf_counter() - t1:.0f}s)")
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(a.rounds):
        for key, fn in variants.items():
            times[key].append(timer(fn, a.steps))
    med = {k: statistics.median(v) for k, v in times.items()}
    log(f"\n{'step (' + ('compiled' if a.compile else 'eager') + ')':<28}{'ms':>8}{'img/s':>9}{'speed vs plain':>16}")
    for key, sec in med.items():
        plain = med[f"plain {key.split()[-1]}"]
        log(f"{key:<28}{sec * 1e3:>8.2f}{a.batch_size / sec:>9.0f}{plain / sec:>16.3f}")
    result = {"device": name, "torch": torch.__version__, "batch": a.batch_size, "compile": a.compile,
              "median_step_s": med}

    if not a.compile:
        log("\nweight generation alone (bf16 autocast), ms")
        grads = {}
        for key in ("mgtool", "mgtool-chunked", "einsum-before"):
            model = models[key.split("-chunked")[0]]
            layers = [m for m, _, _ in model._mixed]
            params = list(model.parameters())

            def fwd(model=model) -> None:
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    model.generate_weights()

            def fwd_bwd(model=model, layers=layers, params=params, key=key) -> None:
                for q in params:
                    q.grad = None
                with chunked(CHUNK if key.endswith("chunked") else None):
                    fwd()
                    torch.autograd.backward([m.weight for m in layers], grads[key])

            fwd()
            grads[key] = [torch.randn_like(m.weight) for m in layers]
            timer(fwd_bwd, 3)
            f, fb = timer(fwd, a.steps), timer(fwd_bwd, a.steps)
            result[f"generation_{key}_ms"] = [f * 1e3, fb * 1e3]
            log(f"{key:<20} forward {f * 1e3:7.2f}   forward+backward {fb * 1e3:7.2f}")
        for key in ("mgtool foreach", "einsum-before foreach"):
            log(f"\ntorch.profiler: {key} step x3, top CUDA kernels")
            log(kernel_table(variants[key], device, a.rows))
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
