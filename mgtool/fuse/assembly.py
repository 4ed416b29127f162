"""Streaming assembly of the grown tensors, and the initialisation of the new tiles.

The inputs' state dicts are consumed one at a time (``place``); the new tiles are then
filled by the chosen initialiser, one call per (bank, template set) (or per layer for
``--init-norm authors-code``). With ``--init-scale S`` each new coefficient vector is then
rescaled so that its generated tile's Frobenius norm is S times the mean norm of the same
layer's diagonal tiles; with ``--init-norm capped`` it is scaled down to that norm where it
is above ``CAP`` times it. A tile is linear in its coefficient vector, so both are exact.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mgtool.coef_init import InitSettings, authors_code_tiles
from mgtool.errors import MgtoolError
from mgtool.fuse.layout import CONCAT, FIRST, HIDDEN, MAX, FusionLayout, coefficient_key
from mgtool.fuse.ratios import gram_of, tile_norm


@dataclass
class Assembly:
    """The grown tensors, filled one input at a time."""

    layout: FusionLayout
    tensors: dict[str, Tensor] = field(default_factory=dict)
    learned: dict[tuple[str, int], list[Tensor]] = field(default_factory=dict)
    new_tiles: int = 0
    grams: dict[tuple[str, tuple[int, ...]], Tensor] = field(default_factory=dict)  # (bank, sets) -> T T^T
    caps: dict[str, LayerCap] = field(default_factory=dict)  # --init-norm capped: what the cap did, per layer

    def _slot(self, key: str, like: Tensor, zero: bool) -> Tensor:
        if key not in self.tensors:
            shape = self.layout.shapes[key]
            make = torch.zeros if zero else torch.empty
            self.tensors[key] = make(shape, dtype=like.dtype)
        return self.tensors[key]

    def place(self, index: int, source: Mapping[str, Tensor]) -> None:
        layout = self.layout
        slots = [index] if layout.fused else list(range(layout.factor))
        for bank in layout.plan.banks:
            key = f"banks.{bank.name}"
            value = source[key]
            if layout.fused:
                self._slot(key, value, zero=False)[index] = value[0]
            else:
                self.tensors[key] = value.detach().clone()
        for layer in layout.plan.layers:
            key = coefficient_key(layer.name)
            alpha = source[key][0, 0]
            out = self._slot(key, alpha, zero=True)
            k = alpha.shape[0]
            role = layout.roles[layer.name]
            for s in slots:
                if role == HIDDEN:
                    out[s, s] = alpha
                elif role == FIRST:
                    out[s, 0] = alpha
                elif layout.fused:
                    out[0, s, s * k : (s + 1) * k] = alpha
                else:
                    out[0, s] = alpha
            self.learned.setdefault((layer.bank, layout.set_of_row(index)), []).append(alpha.detach().clone())
        for key, rule in layout.rules.items():
            value = source[key]
            out = self._slot(key, value, zero=True)
            if rule == MAX:
                out.copy_(torch.maximum(out, value))
                continue
            for s in slots:
                if rule == CONCAT:
                    how = layout.concat[key]
                    n = value.shape[how.dim]
                    # out's dimension viewed as (parts, g, n / parts): input s fills column s.
                    o = out.movedim(how.dim, 0).unflatten(0, (how.parts, layout.factor, n // how.parts))
                    o[:, s] = value.movedim(how.dim, 0).unflatten(0, (how.parts, n // how.parts))
                else:  # SUM
                    out += value

    def initialise_new_tiles(self, settings: InitSettings, generator: torch.Generator) -> int:
        """Fill every new tile, one initialiser call per (bank, set); returns the tile count."""
        layout = self.layout
        if settings.per_layer:
            return self._per_layer(settings, generator)
        groups: dict[tuple[str, int], list[tuple[str, int, int]]] = {}
        for layer, r, c in layout.new_tiles():
            groups.setdefault((layer.bank, layout.set_of_row(r)), []).append((layer.name, r, c))
        scaler = _Scaler(self)
        for bank in layout.plan.banks:
            for s in range(bank.sets):
                tiles = groups.get((bank.name, s), [])
                if not tiles:
                    continue
                learned = torch.stack(self.learned[(bank.name, s)]).double()
                copies = torch.stack([self.tensors[coefficient_key(name)][r, r] for name, r, _ in tiles]).double()
                vectors = settings.init.fn(learned, copies, generator, **settings.params)
                if tuple(vectors.shape) != tuple(copies.shape):
                    raise MgtoolError(
                        f"--init {settings.name} returned shape {tuple(vectors.shape)}, expected {tuple(copies.shape)}"
                    )
                for (name, r, c), v in zip(tiles, vectors):
                    if settings.scale is not None:
                        v = scaler.scaled(name, bank.name, s, v, settings.scale)
                    elif settings.cap is not None:
                        v = self._capped(scaler, name, bank.name, s, v, settings.cap)
                    out = self.tensors[coefficient_key(name)]
                    out[r, c] = v.to(out.dtype)
        return sum(len(t) for t in groups.values())

    def _capped(self, scaler: _Scaler, name: str, bank: str, s: int, v: Tensor, cap: float) -> Tensor:
        ratio = scaler.ratio(name, bank, s, v)
        record = self.caps.setdefault(name, LayerCap(cap))
        record.tiles += 1
        record.max_ratio_before = max(record.max_ratio_before, ratio)
        if ratio <= cap:
            return v
        record.capped += 1
        return scaler.scaled(name, bank, s, v, cap)

    def _per_layer(self, settings: InitSettings, generator: torch.Generator) -> int:
        """``--init-norm authors-code``: each layer's two new tiles from its two diagonal tiles."""
        layout, count = self.layout, 0
        if layout.factor != 2:
            raise MgtoolError(f"--init-norm authors-code follows the authors' code, which grows two nets into one "
                              f"twice as wide; got factor {layout.factor}: use --init-norm capped or unit")
        for layer in layout.plan.layers:
            if layout.roles[layer.name] != HIDDEN:
                continue
            out = self.tensors[coefficient_key(layer.name)]
            tiles = authors_code_tiles(settings.name, torch.stack([out[0, 0], out[1, 1]]), generator)
            for (r, c), v in tiles.items():
                out[r, c] = v.to(out.dtype)
            count += len(tiles)
        return count


@dataclass
class LayerCap:
    """What ``--init-norm capped`` did in one layer: its new tiles, how many it scaled down, and the
    largest tile ratio s before the cap."""

    cap: float
    tiles: int = 0
    capped: int = 0
    max_ratio_before: float = 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {"cap": self.cap, "tiles": self.tiles, "capped": self.capped, "max_ratio_before": self.max_ratio_before}


class _Scaler:
    """Rescales new coefficient vectors to a tile-norm target (one Gram matrix per template set)."""

    def __init__(self, assembly: Assembly):
        self._a = assembly
        self._diagonal: dict[str, float] = {}

    def _gram(self, bank: str, s: int) -> Tensor:
        return gram_of(self._a.grams, self._a.tensors[f"banks.{bank}"], bank, (s,))

    def _diagonal_mean(self, name: str, bank: str) -> float:
        if name not in self._diagonal:
            coefs, layout = self._a.tensors[coefficient_key(name)], self._a.layout
            g = layout.factor
            norms = [float(tile_norm(self._gram(bank, layout.set_of_row(r)), coefs[r, r])) for r in range(g)]
            self._diagonal[name] = sum(norms) / g
        return self._diagonal[name]

    def ratio(self, name: str, bank: str, s: int, v: Tensor) -> float:
        """The tile ratio s of a new tile with coefficients ``v`` (0 when the diagonal tiles are 0)."""
        diagonal = self._diagonal_mean(name, bank)
        return float(tile_norm(self._gram(bank, s), v)) / diagonal if diagonal > 0 else 0.0

    def scaled(self, name: str, bank: str, s: int, v: Tensor, scale: float) -> Tensor:
        target = scale * self._diagonal_mean(name, bank)
        norm = float(tile_norm(self._gram(bank, s), v))
        if target == 0.0:
            return torch.zeros_like(v)
        if not norm > 0.0:
            raise MgtoolError(f"--init-scale: a new tile of layer {name} is 0 before scaling, so no "
                              "scale can give it a norm; use another --init")
        return v * (target / norm)


def fuse_tensors(
    layout: FusionLayout,
    sources: Iterable[Mapping[str, Tensor]],
    init: InitSettings,
    *,
    seed: int = 0,
) -> Assembly:
    """The grown state dict from the inputs' state dicts (consumed one at a time): the
    ``Assembly`` holds the tensors and what ``--init-norm capped`` did per layer."""
    assembly = Assembly(layout)
    count = 0
    for index, source in enumerate(sources):
        assembly.place(index, source)
        count += 1
    expected = layout.factor if layout.fused else 1
    if count != expected:
        raise MgtoolError(f"fuse got {count} inputs, expected {expected}")
    generator = torch.Generator().manual_seed(seed)
    assembly.new_tiles = assembly.initialise_new_tiles(init, generator)
    return assembly
