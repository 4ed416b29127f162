"""Step-time overhead of template mixing against the plain model (issues 2 and 13).

Training mode: one step = forward + backward + SGD step (momentum 0.9). Eval mode
(``--eval``): one forward under ``torch.no_grad`` in eval mode. For each case the plain
model, mgtool's template-mixing model and, as references, mgtool's first einsum
generation and the authors' broadcast formulation run interleaved in one process, round
after round (in reversed order every other round), so that load on a shared machine hits all
alike and no model always runs first. Each figure is the median
over rounds of the per-round ratio to the plain model, measured on two clocks: process
CPU time (robust when other jobs share the cores) and wall time.

    python bench/overhead.py --threads 1                     # all cases, training
    python bench/overhead.py --case resnet18-0.5 --rounds 30 --threads 1
    python bench/overhead.py --eval --threads 1              # evaluation forward
    python bench/overhead.py --case resnet18-0.5 --sgd fused --sgd default --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from mgtool import TemplateMixingNet, to_template_mixing
from mgtool.archs import ArchSpec, build_plain, resolve_spec
from mgtool.mixing import row_templates

# name -> (spec, input size, default batch)
CASES = {
    "resnet18-0.5": (ArchSpec("resnet18", 0.5, 10, 3, {}), 32, 64),  # light: a small model on a CPU
    "wrn-16-4": (ArchSpec("wrn", 4, 10, 3, {"depth": 16}), 32, 128),
    "resnet50-0.5": (ArchSpec("resnet50", 0.5, 1000, 3, {}), 64, 128),
}
SGD_FLAGS = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


class EinsumMixingNet(TemplateMixingNet):
    """mgtool's first generation (before issue 13): one ``torch.einsum`` per bank group,
    autograd through the einsum, no cache. Kept as a reference only."""

    def generate_weights(self) -> None:
        for bank, shape, modules in self._groups:
            coefs = torch.stack([m.coefficients for m in modules])
            t = row_templates(self.banks[bank], shape.row_sets)
            layers, rows, cols = coefs.shape[:3]
            out_t, in_t, *rest = t.shape[2:]
            weight = torch.einsum("lrck,rkoi...->lroci...", coefs, t)
            weight = weight.reshape(layers, rows * out_t, cols * in_t, *rest)
            for module, w in zip(modules, weight):
                module.weight = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.generate_weights()
        return self.net(x)


class BroadcastMixingNet(EinsumMixingNet):
    """The authors' formulation: ``(templates * coefs[:, None, ...]).sum(0)`` per layer.

    It materialises K weight-sized tensors per layer; kept here only as a reference.
    """

    def generate_weights(self) -> None:
        for module, bank, _ in self._mixed:
            templates = self.banks[bank][0]  # (K, *tile), small nets only
            coefs = module.coefficients[0, 0].view(-1, *([1] * (templates.dim() - 1)))
            module.weight = (templates * coefs).sum(0)


REFERENCES = ("einsum-before", "broadcast-ref")


def build_models(name: str, references: tuple[str, ...] = REFERENCES
                 ) -> tuple[dict[str, nn.Module], ArchSpec, int, int]:
    """The plain model and its template-mixing twins (same generated weights), train mode."""
    spec, size, batch = CASES[name]
    spec = resolve_spec(spec)
    torch.manual_seed(0)
    models: dict[str, nn.Module] = {"plain": build_plain(spec)}
    tm = to_template_mixing(build_plain(spec), templates=2, share="pairs")
    models["mgtool"] = tm
    for key, cls in (("einsum-before", EinsumMixingNet), ("broadcast-ref", BroadcastMixingNet)):
        if key in references:
            ref = cls(build_plain(spec), tm.plan)
            ref.load_state_dict(tm.state_dict())
            models[key] = ref
    return {k: m.train() for k, m in models.items()}, spec, size, batch


def train_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, sgd: dict) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, **sgd)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def eval_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    model.eval()

    @torch.no_grad()
    def step() -> None:
        model(x)

    return step


def run_case(name: str, batch: int | None, rounds: int, warmup: int, mode: str, sgd: str,
             references: bool) -> dict:
    refs = () if not references else ("einsum-before", "broadcast-ref") if mode == "train" else ("einsum-before",)
    models, spec, size, default_batch = build_models(name, refs)
    batch = batch or default_batch
    x = torch.randn(batch, spec.in_chans, size, size)
    y = torch.randint(0, spec.num_classes, (batch,))
    steps = {k: (train_step(m, x, y, SGD_FLAGS[sgd]) if mode == "train" else eval_step(m, x))
             for k, m in models.items()}
    for _ in range(warmup):
        for step in steps.values():
            step()
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    wall: dict[str, list[float]] = {k: [] for k in steps}
    load_before = os.getloadavg()[0]
    for r in range(rounds):  # the order alternates, so that no model always runs first (cache state)
        for key, step in (list(steps.items()) if r % 2 == 0 else list(steps.items())[::-1]):
            c0, w0 = time.process_time(), time.perf_counter()
            step()
            cpu[key].append(time.process_time() - c0)
            wall[key].append(time.perf_counter() - w0)

    def ratios(times: dict[str, list[float]]) -> dict[str, float]:
        return {k: statistics.median(a / b for a, b in zip(v, times["plain"]))
                for k, v in times.items() if k != "plain"}

    return {
        "case": name, "mode": mode, "sgd": sgd, "input": [spec.in_chans, size, size], "batch": batch,
        "rounds": rounds, "load_avg_1min": [load_before, os.getloadavg()[0]],
        "median_cpu_s": {k: statistics.median(v) for k, v in cpu.items()},
        "median_wall_s": {k: statistics.median(v) for k, v in wall.items()},
        "ratio_cpu": ratios(cpu), "ratio_wall": ratios(wall),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the case's own (64 or 128)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--eval", action="store_true", help="time the evaluation forward instead of a step")
    parser.add_argument("--sgd", choices=sorted(SGD_FLAGS), action="append",
                        help="SGD implementation for both models (repeatable; default: default)")
    parser.add_argument("--no-references", action="store_true", help="skip the einsum and broadcast references")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    mode = "eval" if args.eval else "train"
    results = [run_case(c, args.batch_size, args.rounds, args.warmup, mode, sgd, not args.no_references)
               for c in (args.case or list(CASES)) for sgd in (args.sgd or ["default"])[: 1 if args.eval else None]]
    cpu = platform.processor() or platform.machine()
    machine = f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if args.json:
        print(json.dumps({"machine": machine, "results": results}, indent=1))
        return
    print(f"machine: {machine}; mode {mode}; ratios = median over rounds of (model / plain)")
    refs = [k for k in results[0]["ratio_cpu"] if k != "mgtool"]
    head = "".join(f"{k + ' cpu':>20}" for k in refs)
    print(f"{'case':<14}{'sgd':>8}{'batch':>6}{'load':>10}{'plain cpu s':>12}{'mgtool cpu':>11}"
          f"{'mgtool wall':>12}{head}")
    for r in results:
        load = "{:.1f}-{:.1f}".format(*r["load_avg_1min"])
        rest = "".join(f"{r['ratio_cpu'][k]:>20.3f}" for k in refs)
        print(f"{r['case']:<14}{r['sgd']:>8}{r['batch']:>6}{load:>10}{r['median_cpu_s']['plain']:>12.4f}"
              f"{r['ratio_cpu']['mgtool']:>11.3f}{r['ratio_wall']['mgtool']:>12.3f}{rest}")


if __name__ == "__main__":
    main()
