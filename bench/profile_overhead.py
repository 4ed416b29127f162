"""Where a template-mixing training step spends its extra time (issue 13), on the CPU.

Times each part of the step on its own, on the process CPU-time clock (robust when other
jobs share the cores), median of ``--repeats`` interleaved repetitions:

- generation forward: every layer's weight generated, with its autograd graph;
- generation backward: that graph's backward from given weight gradients (template and
  coefficient gradients written);
- optimizer step: SGD (momentum 0.9) over templates + coefficients vs plain weights, for
  each SGD implementation;
- the whole step of each model; what the parts do not explain is autograd bookkeeping and
  Python overhead.

for mgtool's generation and for the einsum it replaced (``bench/overhead.py``). Then a
``torch.profiler`` table of the operators whose self CPU time differs most between the two
models' steps.

    python bench/profile_overhead.py                      # ResNet-18 x0.5, 32x32, batch 64, 1 thread
    python bench/profile_overhead.py --case wrn-16-4 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
from overhead import CASES, SGD_FLAGS, build_models
from torch import nn
from torch.profiler import ProfilerActivity, profile


def cpu_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median process CPU time of each function, in ms, run interleaved."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            t0 = time.process_time()
            fn()
            times[key].append(time.process_time() - t0)
    return {k: 1000 * statistics.median(v) for k, v in times.items()}


def generation_parts(model: nn.Module) -> tuple[Callable[[], object], Callable[[], object]]:
    layers = [m for m, _, _ in model._mixed]
    params = list(model.parameters())

    def forward() -> None:
        model.generate_weights()

    def backward() -> None:
        for p in params:
            p.grad = None
        model.generate_weights()
        weights = [m.weight for m in layers]
        torch.autograd.backward(weights, grads)

    model.generate_weights()
    grads = [torch.randn_like(m.weight) for m in layers]
    return forward, backward


def optimizer_step(model: nn.Module, sgd: dict) -> Callable[[], object]:
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9, **sgd)
    return opt.step


def full_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sgd: dict) -> Callable[[], object]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, **sgd)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=sorted(CASES), default="resnet18-0.5")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--rows", type=int, default=20, help="rows of the profiler table")
    p.add_argument("--profiled-steps", type=int, default=3)
    p.add_argument("--sgd-profiled", choices=sorted(SGD_FLAGS), default="default")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    models, spec, size, batch = build_models(a.case, ("einsum-before",))
    plain, tm, before = models["plain"], models["mgtool"], models["einsum-before"]
    x = torch.randn(batch, spec.in_chans, size, size)
    y = torch.randint(0, spec.num_classes, (batch,))
    load = os.getloadavg()[0]

    gen = {}
    for key, model in (("mgtool", tm), ("einsum-before", before)):
        fwd, bwd = generation_parts(model)
        gen[f"{key} fwd"], gen[f"{key} fwd+bwd"] = fwd, bwd
    g = cpu_ms(gen, a.repeats)
    opt = cpu_ms({f"{k} {name}": optimizer_step(m, flags) for name, flags in SGD_FLAGS.items()
                  for k, m in (("plain", plain), ("mgtool", tm))}, a.repeats)
    steps = cpu_ms({f"{k} {name}": full_step(m, x, y, SGD_FLAGS[name]) for name in ("default", "fused")
                    for k, m in (("plain", plain), ("mgtool", tm), ("einsum-before", before))}, a.repeats)

    print(f"{a.case}, {size}x{size}, batch {batch}, {torch.get_num_threads()} thread(s), torch {torch.__version__}; "
          f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}; process CPU ms, median of {a.repeats}")
    print(f"{'part':<44}{'mgtool':>10}{'einsum-before':>15}")
    for key in ("fwd", "fwd+bwd"):
        print(f"{'generation ' + key:<44}{g['mgtool ' + key]:>10.2f}{g['einsum-before ' + key]:>15.2f}")
    print(f"{'generation bwd (difference)':<44}{g['mgtool fwd+bwd'] - g['mgtool fwd']:>10.2f}"
          f"{g['einsum-before fwd+bwd'] - g['einsum-before fwd']:>15.2f}")
    for name in SGD_FLAGS:
        print(f"{'SGD step ' + name + ' (plain ' + format(opt['plain ' + name], '.2f') + ')':<44}"
              f"{opt['mgtool ' + name]:>10.2f}")
    print(f"{'whole step':<28}{'SGD':>8}{'plain ms':>10}{'extra ms':>10}{'unexplained':>13}{'ratio':>8}")
    for name in ("default", "fused"):
        pl = steps[f"plain {name}"]
        for key in ("mgtool", "einsum-before"):
            extra = steps[f"{key} {name}"] - pl
            parts = g[f"{key} fwd+bwd"] + opt[f"mgtool {name}"] - opt[f"plain {name}"]
            print(f"{key:<28}{name:>8}{pl:>10.1f}{extra:>10.1f}{extra - parts:>13.1f}"
                  f"{steps[f'{key} {name}'] / pl:>8.3f}")

    per_op = {}
    for key, model in (("plain", plain), ("mgtool", tm)):
        step = full_step(model, x, y, SGD_FLAGS[a.sgd_profiled])
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(a.profiled_steps):
                step()
        per_op[key] = {e.key: (e.self_cpu_time_total / 1000 / a.profiled_steps, e.count // a.profiled_steps)
                       for e in prof.key_averages()}
    ops = sorted(set(per_op["plain"]) | set(per_op["mgtool"]),
                 key=lambda k: -abs(per_op["mgtool"].get(k, (0, 0))[0] - per_op["plain"].get(k, (0, 0))[0]))
    total = {k: sum(v[0] for v in per_op[k].values()) for k in per_op}
    print(f"\ntorch.profiler, self CPU ms per step (SGD {a.sgd_profiled}, {a.profiled_steps} steps; profiler "
          f"overhead included): plain {total['plain']:.1f}, mgtool {total['mgtool']:.1f}; "
          f"top {a.rows} operators by difference")
    print(f"{'operator':<58}{'plain ms':>10}{'calls':>7}{'mgtool ms':>11}{'calls':>7}{'diff ms':>9}")
    for op in ops[: a.rows]:
        pt, pc = per_op["plain"].get(op, (0.0, 0))
        mt, mc = per_op["mgtool"].get(op, (0.0, 0))
        print(f"{op[:57]:<58}{pt:>10.2f}{pc:>7}{mt:>11.2f}{mc:>7}{mt - pt:>9.2f}")

if __name__ == "__main__":
    main()
