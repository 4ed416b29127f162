"""Training throughput and MFU of WRN-28-10 at 32x32: template-mixing vs plain, and the
GPU-resident loader vs the DataLoader path. Run on a GPU by bench/gpu_check.sh.

    python bench/train_throughput.py --device cuda            # the real measurement
    python bench/train_throughput.py --smoke                  # tiny sizes on the CPU (checks the script)

Model throughput uses synthetic batches already on the device (four, rotated); MFU counts
6 FLOPs per multiply-add per sample (forward + backward = 3 passes, 2 FLOPs each) over the
card's dense bf16 peak. The loader rows time one data path alone (batches + normalisation)
and then end-to-end training of the template-mixing model fed by it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mgtool import TemplateMixingNet, fresh_template_mixing
from mgtool.archs import ArchSpec, build_plain
from mgtool.data import data_config, normaliser, train_loader

PEAK_BF16_TFLOPS = {"H100 PCIe": 756.0, "H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0}


def peak_tflops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16_TFLOPS.items():  # the more specific names come first
        if key in name:
            return value
    return None


def macs_per_sample(model: nn.Module, shape: tuple[int, int, int], batch: int) -> float:
    """Multiply-adds per training sample's forward: fvcore if installed, else conv/linear hooks
    (plus the template mixing einsum, once per batch)."""
    try:
        from mgtool import forward_flops

        return forward_flops(model, shape, batch)
    except ImportError:
        pass
    total = 0.0

    def hook(m: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
        nonlocal total
        w = m.weight
        if isinstance(m, nn.Conv2d):
            total += out.numel() / out.shape[0] * w[0].numel()
        else:
            total += out.numel() / out.shape[0] * w.shape[1]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    param = next(model.parameters())
    was = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, *shape, device=param.device))
    model.train(was)
    for h in handles:
        h.remove()
    if isinstance(model, TemplateMixingNet):
        for layer in model.plan.layers:
            total += model.net.get_submodule(layer.name).coefficients.shape[-1] * \
                torch.Size(model.plan.weight_shape(layer)).numel() / batch
    return total


def timed(fn: Callable[[], None], steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per call (after warm-up), with device synchronisation."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000 / steps
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def make_model(kind: str, spec: ArchSpec) -> nn.Module:
    torch.manual_seed(0)
    return fresh_template_mixing(spec, templates=2, share="pairs", seed=0) if kind == "template-mixing" \
        else build_plain(spec)


def train_step_fn(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]], bf16: bool,
                  device: torch.device, compiled: bool) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    run = torch.compile(model) if compiled else model
    state = {"i": 0}

    def step() -> None:
        x, y = batches[state["i"] % len(batches)]
        state["i"] += 1
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(run(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU, to check the script")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--warmup", type=int, default=15)
    p.add_argument("--compile", choices=["off", "on", "both"], default="both")
    p.add_argument("--mixing-kernel", choices=["auto", "triton", "torch"], default="auto",
                   help="template mixing's weight generation (auto: Triton on CUDA)")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak, if not in the table")
    p.add_argument("--loader-samples", type=int, default=50000)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--loaders-only", action="store_true", help="only the data-path rows (data alone)")
    p.add_argument("--data", default="synthetic", help="data set for the loader rows (e.g. fashion-mnist)")
    p.add_argument("--json-out", default=None)
    a = p.parse_args()
    if a.loaders_only and a.smoke:
        p.error("--loaders-only and --smoke do not go together")
    if a.loader_samples < a.batch_size:
        p.error(f"--loader-samples must be at least --batch-size ({a.batch_size}): the loader rows time whole batches")
    if a.smoke:
        a.device, a.batch_size, a.steps, a.warmup, a.compile, a.loader_samples, a.workers = \
            "cpu", 8, 2, 1, "off", 128, 0
    device = torch.device(a.device)
    bf16 = device.type == "cuda"
    channels_last = device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    spec = ArchSpec("wrn", 1 if a.smoke else 10, 10, 3, {"depth": 10 if a.smoke else 28})
    shape = (3, 32, 32)
    peak = peak_tflops(device, a.peak_tflops)
    gen = torch.Generator(device="cpu").manual_seed(0)
    batches = [(torch.randn(a.batch_size, *shape, generator=gen).to(device),
                torch.randint(0, 10, (a.batch_size,), generator=gen).to(device)) for _ in range(4)]
    if channels_last:
        batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]

    rows: list[dict] = []
    compiles = [] if a.loaders_only else {"off": [False], "on": [True], "both": [False, True]}[a.compile]
    for compiled in compiles:
        for kind in ("plain", "template-mixing"):
            model = make_model(kind, spec)
            macs = macs_per_sample(model, shape, a.batch_size)
            model.to(device)
            if channels_last:
                model.to(memory_format=torch.channels_last)
            kernel = model.set_mixing_kernel(a.mixing_kernel, device, channels_last=channels_last) \
                if isinstance(model, TemplateMixingNet) else None
            sec = timed(train_step_fn(model, batches, bf16, device, compiled), a.steps, a.warmup, device)
            ips = a.batch_size / sec
            flops = 6 * macs * ips
            rows.append({"what": f"{kind}{' +compile' if compiled else ''}", "kind": kind, "compile": compiled,
                         "mixing_kernel": kernel,
                         "images_per_s": ips, "model_tflops": flops / 1e12,
                         "mfu": flops / (peak * 1e12) if peak else None, "macs_per_sample": macs})
            del model
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for r in rows:
        plain = next(q for q in rows if q["kind"] == "plain" and q["compile"] == r["compile"])
        r["vs_plain"] = r["images_per_s"] / plain["images_per_s"]

    # Loaders: CIFAR-shaped synthetic set with CIFAR augmentation (crop 4, flip, cutout 16).
    if a.data == "synthetic":
        cfg = data_config("synthetic", options={"shape": "3x32x32", "classes": 10, "train_size": a.loader_samples,
                                                "test_size": 16, "crop_padding": 4, "flip": True, "cutout": 16})
    else:
        cfg = data_config(a.data)
    norm = normaliser(cfg, channels_last)
    loader_rows = []
    for path in ("device", "dataloader"):
        loader = train_loader(cfg, batch_size=a.batch_size, device=device, seed=0, loader=path, workers=a.workers)
        n = min(len(loader), max(a.steps * 3, 4))
        t0 = time.perf_counter()
        for i, (x, _) in enumerate(loader.epoch(0)):
            norm(x)
            if i + 1 >= n:
                break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        data_ips = n * a.batch_size / (time.perf_counter() - t0)
        if a.loaders_only:
            loader_rows.append({"loader": path, "data_images_per_s": data_ips, "train_images_per_s": float("nan")})
            continue
        model = make_model("template-mixing", spec).to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        model.set_mixing_kernel(a.mixing_kernel, device, channels_last=channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
        steps = min(len(loader), a.steps + a.warmup)
        t0 = None
        for i, (x, y) in enumerate(loader.epoch(1)):
            if i == a.warmup:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(norm(x)).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i + 1 >= steps:
                break
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timed_steps = steps - a.warmup
        train_ips = timed_steps * a.batch_size / (time.perf_counter() - t0) if t0 and timed_steps > 0 else float("nan")
        loader_rows.append({"loader": path, "data_images_per_s": data_ips, "train_images_per_s": train_ips})
        del model

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({os.cpu_count()} cores)"
    print(f"\n{spec.describe()} at 32x32, batch {a.batch_size}, {'bf16 autocast, channels_last' if bf16 else 'fp32'}"
          f", {name}, torch {torch.__version__}, peak {peak or 'unknown'} TFLOP/s")
    if rows:
        print(f"{'model':<26}{'img/s':>10}{'TFLOP/s':>10}{'MFU':>8}{'vs plain':>10}")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        print(f"{r['what']:<26}{r['images_per_s']:>10.0f}{r['model_tflops']:>10.1f}{mfu:>8}{r['vs_plain']:>10.3f}")
    print(f"{'loader (' + cfg.name + ', TM training)':<26}{'data img/s':>12}{'train img/s':>12}")
    for r in loader_rows:
        print(f"{r['loader']:<26}{r['data_images_per_s']:>12.0f}{r['train_images_per_s']:>12.0f}")
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"device": name, "spec": spec.to_dict(), "batch_size": a.batch_size, "models": rows,
                       "loaders": loader_rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
