"""Everything ``fuse`` checks about its inputs, done once at the door.

``validate`` reads each input's header (metadata, tensor shapes and dtypes), refuses
what cannot be fused with a one-line error naming the file, and returns a
``FuseInputs``: nothing after it re-reads a header or repeats a check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mgtool.archs import ArchSpec, resolve_spec
from mgtool.checkpoint import CheckpointMeta, StoredTensor, check_keys, header_tensors, read_meta
from mgtool.errors import MgtoolError
from mgtool.fuse.layout import NetShapes, check_factor, check_small
from mgtool.plan import TemplatePlan


@dataclass(frozen=True)
class FuseInput:
    path: Path
    meta: CheckpointMeta


@dataclass(frozen=True)
class FuseInputs:
    """Checked inputs: template-mixing, small, of one architecture, plan, key set and dtype."""

    inputs: tuple[FuseInput, ...]
    small: NetShapes  # the inputs' architecture and plan, built once
    factor: int

    @property
    def fused(self) -> bool:
        return len(self.inputs) > 1

    @property
    def paths(self) -> list[Path]:
        return [i.path for i in self.inputs]


def growth_factor(n_inputs: int, factor: int | None) -> int:
    """g from the number of inputs and ``--factor``: fusing g nets makes one g times as wide."""
    if n_inputs < 1:
        raise MgtoolError("fuse needs at least one input checkpoint")
    if factor is None:
        return max(n_inputs, 2)
    if n_inputs > 1 and factor != n_inputs:
        raise MgtoolError(
            f"fusing {n_inputs} nets makes one {n_inputs} times as wide (one template set per "
            f"net); got --factor {factor}. Use --factor {n_inputs}, or one input for any factor"
        )
    return check_factor(factor)


def validate(paths: Sequence[Path], factor: int | None) -> FuseInputs:
    """Read every header once and check the inputs against each other and their architecture."""
    g = growth_factor(len(paths), factor)
    metas = [(p, read_meta(p)) for p in paths]
    check_fusable(metas)
    meta0 = metas[0][1]
    assert meta0.plan is not None
    small = NetShapes.of(resolve_spec(meta0.arch), meta0.plan)
    _check_headers(paths, small)
    return FuseInputs(tuple(FuseInput(p, m) for p, m in metas), small, g)


def check_fusable(metas: Sequence[tuple[Path, CheckpointMeta]]) -> None:
    """Every input template-mixing and small, all of one architecture and plan."""
    for path, meta in metas:
        if meta.kind != "template-mixing":
            raise MgtoolError(
                f"{path}: a {meta.kind} checkpoint; fuse needs template-mixing "
                "checkpoints (make one with `mgtool convert` or `mgtool train-small`)"
            )
        assert meta.plan is not None
        check_small(meta.plan, str(path))
    path0, meta0 = metas[0]
    for path, meta in metas[1:]:
        what = _arch_difference(resolve_spec(meta0.arch), resolve_spec(meta.arch))
        if what is None:
            assert meta0.plan is not None and meta.plan is not None
            what = _plan_difference(meta0.plan, meta.plan)
        if what is not None:
            raise MgtoolError(
                f"{path0} and {path} differ in {what}; fuse needs nets of one "
                "architecture and template plan (e.g. `mgtool train-small --like`)"
            )


def _check_headers(paths: Sequence[Path], small: NetShapes) -> None:
    """Each file's tensors are the model's keys and shapes, stored in one dtype per key across inputs."""
    expected = {k: StoredTensor(shape, "") for k, shape in small.state.items()}
    first: dict[str, StoredTensor] | None = None
    for path in paths:
        stored = header_tensors(path)
        check_keys(expected, stored, str(path))  # type: ignore[arg-type]  # only .shape is used
        if first is not None:
            key = next((k for k in stored if stored[k].dtype != first[k].dtype), None)
            if key is not None:
                raise MgtoolError(f"{paths[0]} and {path} store {key} as {first[key].dtype} vs {stored[key].dtype}")
        first = stored


def _arch_difference(a: ArchSpec, b: ArchSpec) -> str | None:
    for name in ("name", "width", "num_classes", "in_chans"):
        va, vb = getattr(a, name), getattr(b, name)
        if va != vb:
            return f"architecture {name}: {va} vs {vb}"
    for key in sorted(set(a.options) | set(b.options)):
        va, vb = a.options.get(key), b.options.get(key)
        if va != vb:
            return f"architecture option {key}: {va} vs {vb}"
    return None


def _plan_difference(a: TemplatePlan, b: TemplatePlan) -> str | None:
    if a.templates_per_layer != b.templates_per_layer:
        return f"templates per layer: {a.templates_per_layer} vs {b.templates_per_layer}"
    if a.share != b.share:
        return f"template sharing: {a.share} vs {b.share}"
    if [x.name for x in a.banks] != [x.name for x in b.banks]:
        return f"template banks: {len(a.banks)} vs {len(b.banks)} banks"
    for x, y in zip(a.banks, b.banks):
        if x != y:
            return f"template bank {x.name}: shape {x.shape} vs {y.shape}"
    for x, y in zip(a.layers, b.layers):
        if x != y:
            return f"the plan of layer {x.name}: bank {x.bank} vs {y.bank} (layer {y.name})"
    return None
