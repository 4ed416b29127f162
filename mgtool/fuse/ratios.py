"""The tile ratio s: a new tile's weight norm over the mean norm of its layer's diagonal tiles.

A tile's weight is its coefficient vector times its row's templates, so its Frobenius
norm is ``sqrt(a^T G a)`` with the row's template Gram matrix ``G = T T^T`` (K x K,
float64): the norm of the generated tile, without generating it. ``fuse
--init-scale`` uses the same norms to rescale each new coefficient vector, and ``fuse
--json`` and ``mgtool info`` report the realised s of a grown net.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mgtool.mixing import RowSets, row_templates
from mgtool.plan import TemplatePlan


def row_grams(bank: Tensor, row_sets: RowSets) -> Tensor:
    """``(rows, M*K, M*K)`` float64 Gram matrices of the templates each row mixes from."""
    t = row_templates(bank.detach().double(), row_sets)
    t = t.reshape(t.shape[0], t.shape[1], -1)
    return t @ t.transpose(1, 2)


def tile_norms(grams: Tensor, coefficients: Tensor) -> Tensor:
    """``(rows, cols)`` Frobenius norms of the generated tiles (coefficients ``(rows, cols, M*K)``)."""
    c = coefficients.detach().double()
    squared = torch.einsum("rck,rkj,rcj->rc", c, grams, c)
    return squared.clamp_min(0).sqrt()


@dataclass(frozen=True)
class TileRatios:
    """Realised s per square grown layer (one value per off-diagonal tile, row-major)."""

    per_layer: dict[str, tuple[float, ...]]

    def values(self) -> list[float]:
        return [v for values in self.per_layer.values() for v in values]

    @staticmethod
    def _summary(values: list[float]) -> dict[str, float]:
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    def to_dict(self) -> dict[str, float]:
        """``{"median", "min", "max"}`` over every new tile of the net."""
        return self._summary(self.values())

    def per_layer_dict(self) -> dict[str, dict[str, float]]:
        return {name: self._summary(list(values)) for name, values in self.per_layer.items()}


def tile_ratios(plan: TemplatePlan, tensors: Mapping[str, Tensor]) -> TileRatios | None:
    """s of every off-diagonal tile of every square grid larger than 1x1; None if there is none.

    Layers whose diagonal tiles are all zero have no scale and are left out.

    ``tensors`` is a template-mixing state dict (``banks.<bank>``, ``net.<layer>.coefficients``).
    """
    per_layer: dict[str, tuple[float, ...]] = {}
    for layer in plan.layers:
        if layer.rows != layer.cols or layer.rows < 2:
            continue
        grams = row_grams(tensors[f"banks.{layer.bank}"], layer.row_sets)
        norms = tile_norms(grams, tensors[f"net.{layer.name}.coefficients"])
        diagonal = float(torch.diagonal(norms).mean())
        off = [float(norms[r, c]) for r in range(layer.rows) for c in range(layer.cols) if r != c]
        if diagonal > 0:  # an all-zero layer has no scale to compare with
            per_layer[layer.name] = tuple(v / diagonal for v in off)
    return TileRatios(per_layer) if per_layer else None


def ratio_report(ratios: TileRatios | None) -> dict[str, Any]:
    """The JSON fields ``fuse --json`` and ``info --json`` share."""
    if ratios is None:
        return {"tile_ratio": None}
    return {"tile_ratio": ratios.to_dict(), "tile_ratio_per_layer": ratios.per_layer_dict()}
