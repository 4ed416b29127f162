"""What ``mgtool info`` reports about a checkpoint."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mgtool.archs import input_size
from mgtool.checkpoint import CheckpointMeta
from mgtool.errors import MgtoolError
from mgtool.flops import forward_flops
from mgtool.loading import load_checkpoint
from mgtool.model import TemplateMixingNet


def checkpoint_info(path: Path | str, *, count_flops: bool = True) -> dict[str, Any]:
    model, meta = load_checkpoint(path)
    total = sum(p.numel() for p in model.parameters())
    info: dict[str, Any] = {
        "path": str(path),
        "kind": meta.kind,
        "format_version": meta.format_version,
        "arch": meta.arch.to_dict(),
        "parameters": {"trainable": total},
        "flops": {"training": meta.flops.training, "given": meta.flops.given},
        "provenance": meta.provenance.to_dict(),
        "data": meta.data,
        "training": meta.training,
    }
    if isinstance(model, TemplateMixingNet):
        plan = meta.plan
        assert plan is not None
        generated = sum(
            math.prod(plan.weight_shape(layer)) for layer in plan.layers
        )
        info["parameters"].update(
            templates=model.template_parameters(),
            coefficients=model.coefficient_parameters(),
            other=total - model.template_parameters() - model.coefficient_parameters(),
            generated_weights=generated,
        )
        from mgtool.fuse.ratios import coefficient_ratios, ratio_report, tile_ratios

        state = model.state_dict()
        info.update(ratio_report(tile_ratios(plan, state), coefficient_ratios(plan, state)))  # null for a small net
        info["plan"] = {
            "templates_per_layer": plan.templates_per_layer,
            "share": plan.share,
            "banks": [
                {
                    "name": b.name,
                    "shape": list(b.shape),
                    "layers": [la.name for la in plan.layers_of(b.name)],
                    "grids": sorted({f"{la.rows}x{la.cols}" for la in plan.layers_of(b.name)}),
                }
                for b in plan.banks
            ],
        }
    if count_flops:
        shape = _input_shape(meta)
        info["flops"]["forward_per_sample"] = forward_flops(model, shape)
        info["flops"]["input_size"] = list(shape)
    return info


def _input_shape(meta: CheckpointMeta) -> tuple[int, int, int]:
    """The training resolution when the checkpoint records its data set, else the family's default."""
    if meta.data:
        from mgtool.data import DataConfig, dataset_info

        try:
            return tuple(dataset_info(DataConfig.from_meta(meta.data)).shape)
        except MgtoolError:
            pass  # e.g. an image folder that is not on this machine
    h, w = input_size(meta.arch)
    return (meta.arch.in_chans, h, w)
