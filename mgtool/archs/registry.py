"""Registry of architecture families: name -> Family, filled by ``register_family``.

Every module in ``mgtool/archs/families/`` is imported on the first registry look-up, so a
new family is one file there: what differs per family (how it builds, grows and widens,
its default CKA layers, how it maps to timm) is a field of its ``Family``, never a branch on
its name elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from mgtool.archs.spec import ArchSpec
from mgtool.archs.timm_bridge import TimmBridge
from mgtool.archs.widening import Widening
from mgtool.errors import MgtoolError, SettingError, check_choice
from mgtool.plugins import import_plugins


@dataclass(frozen=True)
class Family:
    """One architecture family.

    build: spec -> plain ``nn.Module`` with the family's own init and key names.
    options: the family options and their defaults (unknown options are refused).
    grow: spec, g -> the same family with every hidden dimension multiplied by g.
    input_size: default (H, W) for FLOPs counting and verification batches.
    tiny: the smallest instance that exercises the family (``width``, ``num_classes``,
    ``in_chans``, ``options``): the tests are generated from it for every registered family.
    row_interleave: how ``fuse`` lays out the output rows of some mixed layers: layer-name
    glob -> p, the number of equal parts each net's rows are split into, listed part by
    part over the nets (timm's fused qkv: ``{"blocks.*.attn.qkv": 3}``, so the grown qkv is
    ``[q of every net | k ... | v ...]``); that layer's bias is concatenated the same way.
    fusion_sums_logits: whether fusing g nets with zero new tiles computes the sum of their
    logits (True for BatchNorm CNNs; False where a norm, e.g. LayerNorm, mixes the joined
    stream's statistics). ``fuse --verify`` of several nets needs it.
    widening: how ``grow`` widens a plain net of the family (random, net2net, clone, and the
    noise of the last two); None: ``grow_baselines``' channel-space tracing, which handles
    convolutions, norms and residual connections.
    cka_layers: plain net -> the layers ``cka`` compares by default (one representation per
    block); None: the output of every mixable layer except the classifier.
    timm: how its nets and timm's models map onto each other (``export --format timm-dir``,
    pretrained timm sources); None: timm cannot load the family.
    """

    name: str
    build: Callable[[ArchSpec], nn.Module]
    options: dict[str, Any]
    grow: Callable[[ArchSpec, int], ArchSpec]
    input_size: Callable[[ArchSpec], tuple[int, int]]
    summary: str
    tiny: dict[str, Any] = field(default_factory=lambda: {"width": 1.0})
    row_interleave: dict[str, int] = field(default_factory=dict)
    fusion_sums_logits: bool = True
    widening: Widening | None = None
    cka_layers: Callable[[nn.Module], list[str]] | None = None
    timm: TimmBridge | None = None


_FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.name in _FAMILIES:
        raise ValueError(f"architecture family {family.name!r} is registered twice")
    _FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    _ensure_loaded()
    try:
        return _FAMILIES[name]
    except KeyError:
        known = ", ".join(sorted(_FAMILIES))
        raise MgtoolError(f"unknown architecture {name!r}; known: {known}") from None


def family_names() -> list[str]:
    _ensure_loaded()
    return sorted(_FAMILIES)


_loaded = False


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    from mgtool.archs import families

    import_plugins(families)
    _loaded = True


def tiny_spec(name: str) -> ArchSpec:
    """The family's tiny instance (see ``Family.tiny``), for tests and smoke runs."""
    t = get_family(name).tiny
    return resolve_spec(ArchSpec(name, float(t["width"]), int(t.get("num_classes", 7)), int(t.get("in_chans", 3)),
                                 dict(t.get("options", {}))))


def resolve_spec(spec: ArchSpec) -> ArchSpec:
    """Fill in default options and refuse unknown ones; the result is what gets stored."""
    family = get_family(spec.name)
    unknown = sorted(set(spec.options) - set(family.options))
    if unknown:
        known = ", ".join(sorted(family.options)) or "none"
        raise MgtoolError(f"{spec.name}: unknown option(s) {unknown}; known options: {known}")
    if spec.width <= 0 or spec.num_classes < 1 or spec.in_chans < 1:
        raise MgtoolError(f"{spec.name}: width, num_classes and in_chans must be positive")
    options = {**family.options, **spec.options}
    return ArchSpec(spec.name, spec.width, spec.num_classes, spec.in_chans, options)


def build_plain(spec: ArchSpec) -> nn.Module:
    """The family's plain model for a (resolved) spec."""
    spec = resolve_spec(spec)
    return get_family(spec.name).build(spec)


def grow_spec(spec: ArchSpec, factor: int) -> ArchSpec:
    spec = resolve_spec(spec)
    return resolve_spec(get_family(spec.name).grow(spec, factor))


def input_size(spec: ArchSpec) -> tuple[int, int]:
    spec = resolve_spec(spec)
    return get_family(spec.name).input_size(spec)


def check_option(family: str, name: str, value: Any, choices: tuple) -> Any:
    """A family option's value if it is one of ``choices``; the error names it as a family option."""
    try:
        return check_choice(name, value, choices)
    except SettingError as e:
        raise e.renamed(f"{family} option {name}") from None


def scaled(base: int, width: float, what: str) -> int:
    """``base * width`` as a channel count; refuses widths that give fractional channels."""
    value = base * width
    if abs(value - round(value)) > 1e-6 or round(value) < 1:
        raise MgtoolError(
            f"width {width:g} gives {value:g} channels for {what} (base {base}); "
            "choose a width that makes every channel count a whole number"
        )
    return int(round(value))
