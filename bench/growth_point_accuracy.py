"""Accuracy of a fused net at the moment of growth, per coefficient initialiser.

Fuses NET1 and NET2 with each ``--init``, then measures test top-1 in eval mode as written
(BatchNorm running statistics concatenated from the small nets) and again after the
BatchNorm statistics are re-estimated on training images (no weight changes).

    python bench/growth_point_accuracy.py runs/demo/net1.safetensors runs/demo/net2.safetensors
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from torch import nn

import mgtool
from mgtool import read_meta
from mgtool.data import DataConfig, eval_batches
from mgtool.fuse import fuse


def top1(model: nn.Module, batches: list) -> float:
    model.eval()
    right = seen = 0
    with torch.no_grad():
        for x, y in batches:
            right += int((model(x).argmax(1) == y).sum())
            seen += len(y)
    return right / seen


def recalibrate_bn(model: nn.Module, batches: list) -> None:
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the batches
    model.train()
    with torch.no_grad():
        for x, _ in batches:
            model(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("net1", type=Path)
    parser.add_argument("net2", type=Path)
    parser.add_argument("--init", action="append", help="initialisers (default: zero orthogonal random copy)")
    parser.add_argument("--limit", type=int, default=2000, help="test images, and training images for BN")
    args = parser.parse_args()
    cfg = DataConfig.from_meta(read_meta(args.net1).data)
    if cfg is None:
        raise SystemExit(f"{args.net1} records no data set")
    test = list(eval_batches(cfg, split="test", limit=args.limit, batch_size=250))
    train = list(eval_batches(cfg, split="train", limit=args.limit, batch_size=250))
    print(f"{'init':<12} {'eval as fused':>14} {'after BN re-estimation':>23}")
    with tempfile.TemporaryDirectory() as tmp:
        for init in args.init or ["zero", "orthogonal", "random", "copy"]:
            out = Path(tmp) / f"{init}.safetensors"
            fuse([args.net1, args.net2], out, init=init)
            model = mgtool.load(out)
            before = top1(model, test)
            recalibrate_bn(model, train)
            print(f"{init:<12} {before:>14.1%} {top1(model, test):>23.1%}")


if __name__ == "__main__":
    main()
