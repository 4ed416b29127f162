"""Training-step overhead of template mixing against the plain model (issue 2).

One training step = forward + backward + SGD step at batch 128. For each case the
plain model, mgtool's template-mixing model (one einsum per layer) and the authors'
formulation (broadcast multiply and sum over templates, written here as a reference
only) run interleaved in one process; the figure is the median step time of each,
reported as a ratio to the plain model.

    python bench/overhead.py                      # both cases, 7 rounds
    python bench/overhead.py --case wrn-16-4 --rounds 5 --json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch
from torch import nn

from mgtool.archs import ArchSpec, build_plain, resolve_spec
from mgtool.model import TemplateMixingNet
from mgtool.templates import to_template_mixing

CASES = {
    "wrn-16-4": (ArchSpec("wrn", 4, 10, 3, {"depth": 16}), 32),
    "resnet50-0.5": (ArchSpec("resnet50", 0.5, 1000, 3, {}), 64),
}


class BroadcastMixingNet(TemplateMixingNet):
    """The authors' formulation: ``(templates * coefs[:, None, ...]).sum(0)`` per layer.

    It materialises K weight-sized tensors per layer; kept here only as a reference.
    """

    def generate_weights(self) -> None:
        for module, bank, _ in self._mixed:
            templates = self.banks[bank][0]  # (K, *tile), small nets only
            coefs = module.coefficients[0, 0].view(-1, *([1] * (templates.dim() - 1)))
            module.weight = (templates * coefs).sum(0)


def step_timer(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> float:
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        return time.perf_counter() - t0

    return step


def run_case(name: str, batch: int, rounds: int, warmup: int) -> dict:
    spec, size = CASES[name]
    spec = resolve_spec(spec)
    torch.manual_seed(0)
    plain = build_plain(spec).train()
    tm = to_template_mixing(build_plain(spec), templates=2, share="pairs").train()
    ref = BroadcastMixingNet(build_plain(spec), tm.plan)
    ref.load_state_dict(tm.state_dict())
    ref.train()
    x = torch.randn(batch, spec.in_chans, size, size)
    y = torch.randint(0, spec.num_classes, (batch,))
    steps = {"plain": step_timer(plain, x, y), "mgtool": step_timer(tm, x, y),
             "broadcast-ref": step_timer(ref, x, y)}
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(rounds):  # interleaved so drift on a shared machine hits all three alike
        for key, step in steps.items():
            times[key].append(step())
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "case": name,
        "input": [spec.in_chans, size, size],
        "batch": batch,
        "rounds": rounds,
        "median_s": med,
        "ratio_mgtool_vs_plain": med["mgtool"] / med["plain"],
        "ratio_broadcast_vs_plain": med["broadcast-ref"] / med["plain"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = [run_case(c, args.batch_size, args.rounds, args.warmup) for c in (args.case or list(CASES))]
    cpu = platform.processor() or platform.machine()
    machine = f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    if args.json:
        print(json.dumps({"machine": machine, "results": results}, indent=2))
        return
    print(f"machine: {machine}")
    print(f"{'case':<14} {'plain s':>9} {'mgtool s':>9} {'ratio':>7} {'broadcast ratio':>16}")
    for r in results:
        m = r["median_s"]
        print(f"{r['case']:<14} {m['plain']:>9.3f} {m['mgtool']:>9.3f} {r['ratio_mgtool_vs_plain']:>7.3f} "
              f"{r['ratio_broadcast_vs_plain']:>16.3f}")


if __name__ == "__main__":
    main()
