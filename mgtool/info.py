"""What ``mgtool info`` reports about a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mgtool.archs import input_size
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
            int(_prod(plan.weight_shape(layer))) for layer in plan.layers
        )
        info["parameters"].update(
            templates=model.template_parameters(),
            coefficients=model.coefficient_parameters(),
            other=total - model.template_parameters() - model.coefficient_parameters(),
            generated_weights=generated,
        )
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
        h, w = input_size(meta.arch)
        info["flops"]["forward_per_sample"] = forward_flops(model, (meta.arch.in_chans, h, w))
        info["flops"]["input_size"] = [meta.arch.in_chans, h, w]
    return info


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
