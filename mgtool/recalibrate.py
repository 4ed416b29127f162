"""``recalibrate-bn``: re-estimate BatchNorm running statistics, touching nothing else.

After growth the concatenated statistics describe each half on its own input, not the
grown layer's (the new off-diagonal tiles change every layer's input). Recalibration
runs ``samples`` training images (the first N of the split, no augmentation) through
the model in train mode without gradients, with every BatchNorm's momentum set to None
(a cumulative average over all batches), and writes the input's tensors with only the
BatchNorm buffers replaced: every other tensor is bit-identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mgtool.checkpoint import CheckpointMeta, Flops, check_output_path, read_meta, read_tensors, save_checkpoint
from mgtool.data import DataConfig, dataset_info, eval_batches, resolve_config
from mgtool.errors import MgtoolError, check_range
from mgtool.flops import forward_flops
from mgtool.loading import build_model, check_against_header
from mgtool.provenance import Parent, new_provenance, sha256_file
from mgtool.train.distributed import resolve_device
from mgtool.train.evaluate import check_model_fits

BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class RecalibrateResult:
    path: Path
    meta: CheckpointMeta
    layers: int
    samples: int
    flops: float

    def to_dict(self) -> dict[str, Any]:
        return {"output": str(self.path), "bn_layers": self.layers, "samples": self.samples,
                "recalibration_flops": self.flops, "data": self.meta.data}


def batchnorm_layers(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}


@torch.no_grad()
def reestimate(model: nn.Module, batches: Any) -> int:
    """Cumulative-average BatchNorm statistics over ``batches`` of images; returns the sample count."""
    layers = batchnorm_layers(model)
    saved = {name: m.momentum for name, m in layers.items()}
    for m in layers.values():
        m.reset_running_stats()
        m.momentum = None
    was_training = model.training
    model.train()
    seen = 0
    try:
        for x in batches:
            model(x)
            seen += x.shape[0]
    finally:
        model.train(was_training)
        for name, m in layers.items():
            m.momentum = saved[name]
    return seen


def recalibrate_bn(src: Path | str, out: Path | str, data: DataConfig, *, samples: int = 2048,
                   batch_size: int = 256, device: str = "auto", force: bool = False) -> RecalibrateResult:
    """Write ``out``: ``src`` with BatchNorm statistics re-estimated on ``samples`` training images."""
    src = Path(src)
    check_range("samples", samples, low=1)
    check_range("batch_size", batch_size, low=1)
    out = check_output_path(out, force, inputs=[src])
    meta = read_meta(src)
    check_against_header(meta, src)  # sizes checked before anything is allocated, as load_checkpoint does
    tensors = read_tensors(src)  # kept as stored: every tensor but the BatchNorm buffers is written back as is
    model = build_model(meta)
    model.load_state_dict(tensors, strict=True)
    layers = batchnorm_layers(model)
    if not layers:
        raise MgtoolError(f"{src}: {meta.arch.describe()} has no BatchNorm layers to recalibrate")
    data = resolve_config(data)
    info = dataset_info(data)
    check_model_fits(model, meta.arch.describe(), data, info.shape, info.num_classes)
    dev = resolve_device(device)
    model.to(dev)
    seen = reestimate(model, (x for x, _ in eval_batches(data, "train", samples, batch_size, dev)))
    state = model.state_dict()
    new = dict(tensors)
    for name in layers:
        for buffer in BN_BUFFERS:
            key = f"{name}.{buffer}"
            new[key] = state[key].detach().cpu().to(tensors[key].dtype)
    spent = seen * forward_flops(model.cpu(), info.shape)
    out_meta = CheckpointMeta(
        kind=meta.kind, arch=meta.arch, plan=meta.plan,
        provenance=new_provenance((Parent(str(src), sha256_file(src), "input", meta.flops.training),)),
        flops=Flops(training=meta.flops.training + spent, given=meta.flops.given),
        data=meta.data if meta.data is not None else data.to_dict(),
        training={**(meta.training or {}), "recalibrated_bn": {"samples": seen, "data": data.to_dict()}},
    )
    path = save_checkpoint(out, new, out_meta, force=force)
    return RecalibrateResult(path, out_meta, len(layers), seen, spent)
