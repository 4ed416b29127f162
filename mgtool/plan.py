"""The template plan: which layer mixes from which bank, with which tile grid.

A bank holds ``sets`` template sets of ``templates_per_set`` templates each, all of
one tile shape; its tensor is ``(sets, templates_per_set, *tile_shape)``. A layer is a
``rows x cols`` grid of tiles; row ``r`` mixes from the sets ``row_sets[r]`` of its
bank, and every tile has its own coefficient vector of length
``len(row_sets[r]) * templates_per_set``. A converted or freshly made small network
has one set per bank and 1x1 grids; ``fuse`` makes grids of g x g tiles (g x 1 for the
first layer, 1 x g for the classifier) over banks of g sets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from mgtool.errors import MgtoolError, check_choice

SHARE_MODES = ("pairs", "none")


MAX_BANK_VALUES = 2**40  # more values than any real template bank: a crafted size, refused


@dataclass(frozen=True)
class BankPlan:
    name: str
    sets: int
    templates_per_set: int
    tile_shape: tuple[int, ...]

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.sets, self.templates_per_set, *self.tile_shape)


@dataclass(frozen=True)
class LayerPlan:
    name: str
    bank: str
    rows: int
    cols: int
    row_sets: tuple[tuple[int, ...], ...]
    # p > 1: the weight lists part 0 of every tile row's output rows, then part 1, ...
    # (``mgtool.mixing.mix``); set by fuse where the family declares it (timm's fused qkv: 3).
    row_interleave: int = 1


@dataclass(frozen=True)
class TemplatePlan:
    templates_per_layer: int
    share: str
    banks: tuple[BankPlan, ...]
    layers: tuple[LayerPlan, ...]

    def bank(self, name: str) -> BankPlan:
        for b in self.banks:
            if b.name == name:
                return b
        raise KeyError(name)

    def coefficient_shape(self, layer: LayerPlan) -> tuple[int, int, int]:
        bank = self.bank(layer.bank)
        return (layer.rows, layer.cols, len(layer.row_sets[0]) * bank.templates_per_set)

    def weight_shape(self, layer: LayerPlan) -> tuple[int, ...]:
        out_t, in_t, *rest = self.bank(layer.bank).tile_shape
        return (layer.rows * out_t, layer.cols * in_t, *rest)

    def layers_of(self, bank: str) -> list[LayerPlan]:
        return [layer for layer in self.layers if layer.bank == bank]

    def to_dict(self) -> dict[str, Any]:
        return {
            "templates_per_layer": self.templates_per_layer,
            "share": self.share,
            "banks": [
                {
                    "name": b.name,
                    "sets": b.sets,
                    "templates_per_set": b.templates_per_set,
                    "tile_shape": list(b.tile_shape),
                }
                for b in self.banks
            ],
            "layers": [
                {
                    "name": layer.name,
                    "bank": layer.bank,
                    "rows": layer.rows,
                    "cols": layer.cols,
                    "row_sets": [list(r) for r in layer.row_sets],
                    **({"row_interleave": layer.row_interleave} if layer.row_interleave != 1 else {}),
                }
                for layer in self.layers
            ],
        }

    @classmethod
    def from_dict(cls, data: Any) -> TemplatePlan:
        try:
            _only_keys(data, {"templates_per_layer", "share", "banks", "layers"}, "plan")
            banks = []
            for b in data["banks"]:
                _only_keys(b, {"name", "sets", "templates_per_set", "tile_shape"}, "plan bank")
                banks.append(
                    BankPlan(
                        str(b["name"]),
                        int(b["sets"]),
                        int(b["templates_per_set"]),
                        tuple(int(d) for d in b["tile_shape"]),
                    )
                )
            layers = []
            for la in data["layers"]:
                _only_keys(la, {"name", "bank", "rows", "cols", "row_sets", "row_interleave"}, "plan layer")
                layers.append(
                    LayerPlan(
                        str(la["name"]),
                        str(la["bank"]),
                        int(la["rows"]),
                        int(la["cols"]),
                        tuple(tuple(int(s) for s in r) for r in la["row_sets"]),
                        int(la.get("row_interleave", 1)),
                    )
                )
            plan = cls(int(data["templates_per_layer"]), str(data["share"]), tuple(banks), tuple(layers))
        except (KeyError, TypeError, ValueError) as e:
            raise MgtoolError(f"malformed template plan ({type(e).__name__}: {e})") from None
        plan.validate()
        return plan

    def validate(self) -> None:
        """Internal consistency: names unique, every layer's bank exists, row sets in range."""
        names = [b.name for b in self.banks]
        if len(set(names)) != len(names):
            raise MgtoolError("template plan: duplicate bank names")
        layer_names = [layer.name for layer in self.layers]
        if len(set(layer_names)) != len(layer_names):
            raise MgtoolError("template plan: a layer is listed twice")
        for b in self.banks:
            if (b.sets < 1 or b.templates_per_set < 1 or len(b.tile_shape) < 2 or min(b.tile_shape) < 1
                    or math.prod(b.shape) > MAX_BANK_VALUES):
                raise MgtoolError(f"template plan: bank {b.name} has an invalid shape {b.shape}")
        for layer in self.layers:
            if layer.bank not in names:
                raise MgtoolError(f"template plan: layer {layer.name} uses unknown bank {layer.bank}")
            sets = self.bank(layer.bank).sets
            if len(layer.row_sets) != layer.rows or layer.rows < 1 or layer.cols < 1:
                raise MgtoolError(f"template plan: layer {layer.name} has {layer.rows} rows "
                                  f"but {len(layer.row_sets)} row_sets")
            out_rows = self.bank(layer.bank).tile_shape[0]
            if layer.row_interleave < 1 or out_rows % layer.row_interleave:
                raise MgtoolError(f"template plan: layer {layer.name} cannot interleave {out_rows} rows "
                                  f"in {layer.row_interleave} parts")
            widths = {len(r) for r in layer.row_sets}
            if len(widths) != 1 or 0 in widths:
                raise MgtoolError(f"template plan: layer {layer.name} rows use unequal set counts")
            if any(not 0 <= s < sets for r in layer.row_sets for s in r):
                raise MgtoolError(f"template plan: layer {layer.name} names a set outside 0..{sets - 1}")


def _only_keys(data: Any, allowed: set[str], what: str) -> None:
    if not isinstance(data, dict):
        raise TypeError(f"{what} must be an object")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise KeyError(f"{what} has unknown keys {unknown}")


def mixable_layers(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every Conv2d and Linear in module order; grouped convolutions are refused."""
    layers = []
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.groups != 1:
                raise MgtoolError(
                    f"layer {name} is a grouped/depthwise convolution (groups={module.groups}); "
                    "template mixing supports groups=1 only"
                )
            layers.append((name, module))
        elif isinstance(module, nn.Linear):
            layers.append((name, module))
        elif isinstance(module, nn.modules.conv._ConvNd):
            raise MgtoolError(f"layer {name} is a {type(module).__name__}; only Conv2d and Linear mix")
    return layers


def make_plan(net: nn.Module, templates_per_layer: int = 2, share: str = "pairs") -> TemplatePlan:
    """The plan of a small network: 1x1 grids, one set per bank.

    ``pairs`` pairs each layer with the next layer of identical weight shape in module
    order (at most two layers per bank, Savarese & Maire); ``none`` gives every layer
    its own bank. A bank used by L layers holds L * templates_per_layer templates.
    """
    if templates_per_layer < 1:
        raise MgtoolError(f"--templates must be at least 1, got {templates_per_layer}")
    check_choice("share", share, SHARE_MODES)
    groups: list[list[tuple[str, tuple[int, ...]]]] = []
    waiting: dict[tuple[int, ...], int] = {}
    found = mixable_layers(net)
    for name, module in found:
        shape = tuple(module.weight.shape)
        if share == "pairs" and shape in waiting:
            groups[waiting.pop(shape)].append((name, shape))
            continue
        if share == "pairs":
            waiting[shape] = len(groups)
        groups.append([(name, shape)])
    banks, layers = [], []
    for i, group in enumerate(groups):
        bank = f"b{i:03d}"
        banks.append(BankPlan(bank, 1, len(group) * templates_per_layer, group[0][1]))
        layers.extend(LayerPlan(name, bank, 1, 1, ((0,),)) for name, _ in group)
    order = {name: i for i, (name, _) in enumerate(found)}
    layers.sort(key=lambda la: order[la.name])
    return TemplatePlan(templates_per_layer, share, tuple(banks), tuple(layers))
