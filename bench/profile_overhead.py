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
``torch.profiler`` table of the template-mixing step's top operators.

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
    p.add_argument("--rows", type=int, default=15, help="rows of the profiler table")
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
    for name in ("default", "fused"):
        pl = steps[f"plain {name}"]
        for key in ("mgtool", "einsum-before"):
            extra = steps[f"{key} {name}"] - pl
            parts = g[f"{key} fwd+bwd"] + opt[f"mgtool {name}"] - opt[f"plain {name}"]
            print(f"{'step, SGD ' + name + ': plain ' + format(pl, '.1f') + ', extra (rest)':<44}"
                  f"{'' if key == 'mgtool' else ' ' * 10}{extra:>10.1f} ({extra - parts:+.1f})"
                  f"  ratio {steps[f'{key} {name}'] / pl:.3f}")

    step = full_step(tm, x, y, SGD_FLAGS["default"])
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    print(f"\ntorch.profiler, template-mixing step (3 steps), top {a.rows} operators by self CPU time")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows))


if __name__ == "__main__":
    main()
