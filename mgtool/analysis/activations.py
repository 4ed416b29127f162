"""Which layers to look at, and their outputs, taken with forward hooks on an eval-mode model.

Layer names are the family's own module names (for a template-mixing net, the names
inside its wrapped ``net``, e.g. ``stages.0.1`` rather than ``net.stages.0.1``).

Default layers (``--layers`` not given): the family's own (``Family.cka_layers``), one
representation per block as in Kornblith et al. and the paper's Fig. 5 (``wrn``: ``stem`` and
every residual block; ``resnet*``: ``act1`` and every block; ``vit``: every transformer block,
all tokens); for a family that declares none, the outputs of every mixable layer
(Conv2d/Linear) except the classifier.

``--layers`` takes comma-separated globs over those names: ``*`` matches within one
dotted part, ``**`` across parts (``stages.*.*`` = every WRN block, ``**conv2`` = every
``conv2``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mgtool.archs import get_family
from mgtool.errors import MgtoolError
from mgtool.model import TemplateMixingNet
from mgtool.plan import mixable_layers

HALVES = ("first", "second", "both")


def check_half(half: str) -> None:
    if half not in HALVES and not (half.isdigit() and int(half) >= 1):
        raise MgtoolError(f"--half must be first, second, both or a block number 1..g, got {half!r}")


def plain_net(model: nn.Module) -> nn.Module:
    """The module tree whose names are the family's own (unwraps a template-mixing net)."""
    return model.net if isinstance(model, TemplateMixingNet) else model


def available_layers(model: nn.Module) -> list[str]:
    return [name for name, _ in plain_net(model).named_modules() if name]


def default_layers(model: nn.Module, family: str) -> list[str]:
    net = plain_net(model)
    declared = get_family(family).cka_layers
    if declared is not None:
        return declared(net)
    layers = mixable_layers(net)
    if layers and isinstance(layers[-1][1], nn.Linear):
        layers = layers[:-1]
    return [name for name, _ in layers]


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """``*``: any characters but ``.``; ``**``: any characters; ``?``: one character but ``.``."""
    parts, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        elif pattern[i] == "*":
            parts.append(r"[^.]*")
            i += 1
        elif pattern[i] == "?":
            parts.append(r"[^.]")
            i += 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(parts) + r"\Z")


def select_layers(model: nn.Module, family: str, pattern: str | None, where: str) -> list[str]:
    """The layers named by ``pattern`` (comma-separated globs) in module order, or the defaults."""
    if pattern is None:
        return default_layers(model, family)
    names = available_layers(model)
    regexes = [glob_to_regex(p.strip()) for p in pattern.split(",") if p.strip()]
    chosen = [n for n in names if any(r.match(n) for r in regexes)]
    if not chosen:
        raise MgtoolError(f"{where}: --layers {pattern!r} matches no layer; layers include {_examples(model, family)}")
    return chosen


def resolve_layer(model: nn.Module, family: str, name: str, where: str) -> str:
    """One layer: an exact module name, or a glob that matches exactly one."""
    names = available_layers(model)
    if name in names:
        return name
    regex = glob_to_regex(name)
    hits = [n for n in names if regex.match(n)]
    if len(hits) == 1:
        return hits[0]
    if hits:
        shown = ", ".join(hits[:4]) + (", ..." if len(hits) > 4 else "")
        raise MgtoolError(f"{where}: --layer {name!r} matches {len(hits)} layers ({shown}); name exactly one")
    raise MgtoolError(f"{where}: no layer named {name!r}; layers include {_examples(model, family)}")


def _examples(model: nn.Module, family: str, n: int = 6) -> str:
    names = default_layers(model, family) or available_layers(model)
    shown = names if len(names) <= n else [*names[:3], "...", *names[-3:]]
    return ", ".join(shown)


def growth_factor(model: nn.Module) -> int:
    """g for a grown template-mixing net (its tile grids have g rows), 1 otherwise."""
    if not isinstance(model, TemplateMixingNet):
        return 1
    return max(layer.rows for layer in model.plan.layers)


def grown_widths(model: nn.Module) -> set[int]:
    """Output widths of the layers whose outputs were grown (tile grids with more than one row)."""
    if not isinstance(model, TemplateMixingNet):
        return set()
    return {layer.rows * model.plan.bank(layer.bank).tile_shape[0] for layer in model.plan.layers if layer.rows > 1}


@dataclass(frozen=True)
class ChannelBlock:
    """Channels ``[index * C/g, (index + 1) * C/g)`` of a grown layer's output: the block
    that came from small net ``index + 1`` (``fuse`` tiles net 1 first)."""

    index: int
    factor: int

    @classmethod
    def from_half(cls, half: str, factor: int) -> ChannelBlock | None:
        """``first``/``second``/``both`` (all channels: None), or ``N`` for block N of g > 2."""
        check_half(half)
        if half == "both":
            return None
        index = {"first": 0, "second": 1}.get(half, int(half) - 1 if half.isdigit() else -1)
        if not 0 <= index < factor:
            raise MgtoolError(f"--half {half}: the grown network has {factor} channel blocks (g={factor})")
        return cls(index, factor)

    def take(self, activation: Tensor, layer: str, widths: set[int]) -> Tensor:
        channels = activation.shape[1]
        if channels not in widths or channels % self.factor:
            raise MgtoolError(
                f"layer {layer}: its output has {channels} channels, not a grown width "
                f"({sorted(widths)}); --half applies to layers inside the grown network"
            )
        size = channels // self.factor
        return activation[:, self.index * size : (self.index + 1) * size]


class LayerTap:
    """Forward hooks on named modules; ``run(x)`` returns ``reduce(output)`` per layer, in order.

    ``reduce`` sees each output (one channel block of it with ``block``) while the hook
    runs, so a Gram matrix can be formed without keeping every layer's activations.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: list[str],
        reduce: Callable[[Tensor], Tensor],
        block: ChannelBlock | None = None,
    ):
        self.model = model.eval()
        self.layers = list(layers)
        self._reduce = reduce
        self._block = block
        self._widths = grown_widths(model)
        self._out: dict[str, Tensor] = {}
        modules = dict(plain_net(model).named_modules())
        missing = [n for n in self.layers if n not in modules]
        if missing:
            raise MgtoolError(f"no layer named {missing[0]!r} in the model")
        self._handles = [modules[n].register_forward_hook(self._hook(n)) for n in self.layers]

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: object, output: object) -> None:
            if not isinstance(output, Tensor):
                raise MgtoolError(f"layer {name} returns {type(output).__name__}, not a tensor; choose another layer")
            out = output.detach()
            if self._block is not None:
                out = self._block.take(out, name, self._widths)
            self._out[name] = self._reduce(out)

        return hook

    @torch.no_grad()
    def run(self, x: Tensor) -> list[Tensor]:
        self._out = {}
        self.model(x)
        return [self._out[n] for n in self.layers]

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> LayerTap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
