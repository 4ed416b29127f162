"""MixtureGrowth fusion: g small template-mixing nets -> one net g times as wide.

Tiling (paper section 3.3, Fig. 2), for growth factor g and inputs 0..g-1:

* every bank gets ``sets = g``: set s holds input s's templates of that bank;
* hidden layer (output and input dimension grow): a g x g grid; row r mixes from
  set r, tile (r, r) is input r's layer, the off-diagonal tiles are new (``--init``);
* first layer (input dimension fixed, e.g. the image): g x 1, tile (r, 0) = input r's;
* classifier (output dimension fixed, e.g. the classes): 1 x g with one row over all
  sets; tile (0, c) has input c's coefficients in block c and zeros elsewhere;
* per-channel tensors (BatchNorm affine and statistics, biases of growing layers) are
  concatenated [input 0; input 1; ...]; the classifier bias is the sum of the inputs'
  biases; ``num_batches_tracked`` is the largest of the inputs'.

So with ``--init zero`` the grown net computes, in eval mode, the sum of its inputs'
logits. With one input ("w/o fusion") every bank keeps its single set, every row mixes
from it, the diagonal tiles and the new half's per-channel tensors are copies of the
input's, and ``--init zero`` computes g times the input's logits.

Which layer is hidden, first or classifier is read off the shapes of the family's own
models at width 1x and gx, so no family needs a list of names.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor, nn

from mgtool.archs import ArchSpec, build_plain, grow_spec, resolve_spec
from mgtool.checkpoint import (
    CheckpointMeta,
    Flops,
    check_keys,
    check_output_path,
    read_meta,
    save_checkpoint,
)
from mgtool.coef_init import CoefInit, get_init
from mgtool.convert import RELATIVE_TOLERANCE, logit_check, logit_difference
from mgtool.errors import MgtoolError, check_range
from mgtool.model import TemplateMixingNet
from mgtool.plan import LayerPlan, TemplatePlan, mixable_layers
from mgtool.provenance import Parent, new_provenance, sha256_file

HIDDEN, FIRST, CLASSIFIER = "hidden", "first", "classifier"
CONCAT, SUM, MAX = "concat", "sum", "max"  # rules for tensors that are not banks/coefficients


@dataclass(frozen=True)
class FusionLayout:
    """Everything about a fusion that follows from the architecture and plan alone."""

    small_spec: ArchSpec
    spec: ArchSpec  # the grown architecture
    small_plan: TemplatePlan
    plan: TemplatePlan  # the grown plan
    factor: int
    fused: bool  # False: one input, every row mixes from its single set
    roles: dict[str, str]  # mixed layer -> hidden | first | classifier
    rules: dict[str, str]  # other tensors -> concat | sum | max
    shapes: dict[str, tuple[int, ...]]  # grown state-dict shapes
    small_shapes: dict[str, tuple[int, ...]]

    def set_of_row(self, row: int) -> int:
        return row if self.fused else 0

    def new_tiles(self) -> list[tuple[LayerPlan, int, int]]:
        """The tiles no input trained: off-diagonal tiles of hidden layers, in plan order."""
        g = self.factor
        return [
            (layer, r, c)
            for layer in self.plan.layers
            if self.roles[layer.name] == HIDDEN
            for r in range(g)
            for c in range(g)
            if r != c
        ]


def meta_model(spec: ArchSpec, plan: TemplatePlan | None = None) -> nn.Module:
    """The family's model on the meta device: shapes and names, no memory, no init cost."""
    with torch.device("meta"):
        net = build_plain(spec)
        return net if plan is None else TemplateMixingNet(net, plan)


def coefficient_key(layer: str) -> str:
    return f"net.{layer}.coefficients"


def layer_roles(spec: ArchSpec, plan: TemplatePlan, factor: int) -> dict[str, str]:
    """Each mixed layer's role, from its weight shape at width 1x and ``factor``x."""
    small = {n: tuple(m.weight.shape) for n, m in mixable_layers(meta_model(spec))}
    grown = {n: tuple(m.weight.shape) for n, m in mixable_layers(meta_model(grow_spec(spec, factor)))}
    if set(small) != set(grown):
        raise MgtoolError(f"{spec.name}: growing by {factor} changes the set of layers; fuse cannot tile it")
    roles = {}
    for layer in plan.layers:
        s, big = small[layer.name], grown[layer.name]
        out_grows, in_grows = big[0] == factor * s[0], big[1] == factor * s[1]
        out_fixed, in_fixed = big[0] == s[0], big[1] == s[1]
        if big[2:] == s[2:] and out_grows and in_grows:
            roles[layer.name] = HIDDEN
        elif big[2:] == s[2:] and out_grows and in_fixed:
            roles[layer.name] = FIRST
        elif big[2:] == s[2:] and out_fixed and in_grows:
            roles[layer.name] = CLASSIFIER
        elif big == s:
            raise MgtoolError(
                f"{spec.name}: layer {layer.name} does not grow with the width (weight {s} at x1 "
                f"and x{factor}), so the inputs' copies of it cannot be tiled into one layer "
                "(resnet families: make the small nets with --opt stem=scaled)"
            )
        else:
            raise MgtoolError(
                f"{spec.name}: layer {layer.name} has weight {s} in the small net and {big} at "
                f"width x{factor}; fuse can tile a layer only if its output and/or input "
                f"dimension grows {factor}-fold and nothing else changes"
            )
    return roles


def grown_plan(plan: TemplatePlan, roles: dict[str, str], factor: int, fused: bool) -> TemplatePlan:
    """The plan of the fused net (see the module docstring for the tiling)."""
    g, sets = factor, factor if fused else 1
    banks = tuple(replace(b, sets=sets) for b in plan.banks)
    per_row = tuple((r if fused else 0,) for r in range(g))
    layers = []
    for layer in plan.layers:
        role = roles[layer.name]
        if role == HIDDEN:
            layers.append(replace(layer, rows=g, cols=g, row_sets=per_row))
        elif role == FIRST:
            layers.append(replace(layer, rows=g, cols=1, row_sets=per_row))
        else:
            all_sets = tuple(range(g)) if fused else (0,)
            layers.append(replace(layer, rows=1, cols=g, row_sets=(all_sets,)))
    out = TemplatePlan(plan.templates_per_layer, plan.share, banks, tuple(layers))
    out.validate()
    return out


def plan_fusion(spec: ArchSpec, plan: TemplatePlan, factor: int, fused: bool) -> FusionLayout:
    """Roles, grown plan and a rule for every other tensor; refuses what fits no rule."""
    if factor < 2:
        raise MgtoolError(f"--factor must be at least 2, got {factor}")
    spec = resolve_spec(spec)
    _check_small(plan, "the input")
    roles = layer_roles(spec, plan, factor)
    big_spec = grow_spec(spec, factor)
    big_plan = grown_plan(plan, roles, factor, fused)
    small_sd = meta_model(spec, plan).state_dict()
    big_sd = meta_model(big_spec, big_plan).state_dict()  # also checks plan vs architecture
    if set(small_sd) != set(big_sd):
        diff = sorted(set(small_sd) ^ set(big_sd))
        raise MgtoolError(f"{spec.name}: growing changes the state-dict keys ({diff[:4]}); fuse cannot map them")
    classifier_biases = {f"net.{n}.bias" for n, r in roles.items() if r == CLASSIFIER}
    rules = {}
    for key, value in big_sd.items():
        if key.startswith("banks.") or key.endswith(".coefficients"):
            continue
        s, big = tuple(small_sd[key].shape), tuple(value.shape)
        if key.endswith("num_batches_tracked") and s == big == ():
            rules[key] = MAX
        elif len(s) >= 1 and big[0] == factor * s[0] and big[1:] == s[1:]:
            rules[key] = CONCAT
        elif key in classifier_biases and s == big:
            rules[key] = SUM
        else:
            raise MgtoolError(
                f"{spec.name}: no fusion rule for tensor {key} (shape {s} in the small net, {big} "
                f"grown); fuse concatenates per-channel tensors and sums classifier biases only"
            )
    return FusionLayout(
        small_spec=spec,
        spec=big_spec,
        small_plan=plan,
        plan=big_plan,
        factor=factor,
        fused=fused,
        roles=roles,
        rules=rules,
        shapes={k: tuple(v.shape) for k, v in big_sd.items()},
        small_shapes={k: tuple(v.shape) for k, v in small_sd.items()},
    )


@dataclass
class _Assembly:
    """The grown tensors, filled one input at a time."""

    layout: FusionLayout
    tensors: dict[str, Tensor] = field(default_factory=dict)
    learned: dict[tuple[str, int], list[Tensor]] = field(default_factory=dict)

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
            if rule == MAX:
                out = self._slot(key, value, zero=True)
                out.copy_(torch.maximum(out, value))
                continue
            out = self._slot(key, value, zero=True)
            for s in slots:
                if rule == CONCAT:
                    n = value.shape[0]
                    out[s * n : (s + 1) * n] = value
                else:  # SUM
                    out += value

    def initialise_new_tiles(self, init: CoefInit, generator: torch.Generator, noise: float) -> int:
        """Fill every new tile, one initialiser call per (bank, set); returns the tile count."""
        layout = self.layout
        groups: dict[tuple[str, int], list[tuple[str, int, int]]] = {}
        for layer, r, c in layout.new_tiles():
            groups.setdefault((layer.bank, layout.set_of_row(r)), []).append((coefficient_key(layer.name), r, c))
        for bank in layout.plan.banks:
            for s in range(bank.sets):
                tiles = groups.get((bank.name, s), [])
                if not tiles:
                    continue
                learned = torch.stack(self.learned[(bank.name, s)]).double()
                copies = torch.stack([self.tensors[key][r, r] for key, r, _ in tiles]).double()
                vectors = init.fn(learned, copies, generator, noise)
                if tuple(vectors.shape) != tuple(copies.shape):
                    raise MgtoolError(
                        f"--init {init.name} returned shape {tuple(vectors.shape)}, expected {tuple(copies.shape)}"
                    )
                for (key, r, c), v in zip(tiles, vectors):
                    self.tensors[key][r, c] = v.to(self.tensors[key].dtype)
        return sum(len(t) for t in groups.values())


def fuse_tensors(
    layout: FusionLayout,
    sources: Iterable[Mapping[str, Tensor]],
    *,
    init: str = "orthogonal",
    seed: int = 0,
    noise: float = 0.0,
) -> tuple[dict[str, Tensor], int]:
    """The grown state dict from the inputs' state dicts (consumed one at a time).

    Returns the tensors and the number of new tiles initialised.
    """
    initialiser = get_init(init)
    check_range("noise", noise, low=0)  # NaN and Inf are refused too
    assembly = _Assembly(layout)
    count = 0
    for index, source in enumerate(sources):
        assembly.place(index, source)
        count += 1
    expected = layout.factor if layout.fused else 1
    if count != expected:
        raise MgtoolError(f"fuse got {count} inputs, expected {expected}")
    generator = torch.Generator().manual_seed(seed)
    new = assembly.initialise_new_tiles(initialiser, generator, noise)
    return assembly.tensors, new


def fuse_models(
    models: Sequence[TemplateMixingNet],
    spec: ArchSpec,
    *,
    factor: int | None = None,
    init: str = "orthogonal",
    seed: int = 0,
    noise: float = 0.0,
) -> tuple[TemplateMixingNet, FusionLayout]:
    """In-memory fusion of small template-mixing models (for the library and tests)."""
    g = _factor(len(models), factor)
    plan = models[0].plan
    for i, m in enumerate(models[1:], start=1):
        if m.plan != plan:
            raise MgtoolError(f"model {i} has a different template plan from model 0")
    layout = plan_fusion(spec, plan, g, fused=len(models) > 1)
    tensors, _ = fuse_tensors(layout, (m.state_dict() for m in models), init=init, seed=seed, noise=noise)
    return _build(layout, tensors, "fused model"), layout


def _build(layout: FusionLayout, tensors: dict[str, Tensor], where: str) -> TemplateMixingNet:
    model = TemplateMixingNet(build_plain(layout.spec), layout.plan)
    check_keys(model.state_dict(), tensors, where)
    model.load_state_dict(tensors, strict=True)
    return model


def _factor(n_inputs: int, factor: int | None) -> int:
    if n_inputs < 1:
        raise MgtoolError("fuse needs at least one input checkpoint")
    if factor is None:
        return max(n_inputs, 2)
    if n_inputs > 1 and factor != n_inputs:
        raise MgtoolError(
            f"fusing {n_inputs} nets makes one {n_inputs} times as wide (one template set per "
            f"net); got --factor {factor}. Use --factor {n_inputs}, or one input for any factor"
        )
    if factor < 2:
        raise MgtoolError(f"--factor must be at least 2, got {factor}")
    return factor


# ---------------------------------------------------------------------------------------
# Files


@dataclass(frozen=True)
class FuseResult:
    path: Path | None
    meta: CheckpointMeta
    layout: FusionLayout
    init: str
    new_tiles: int
    parameters: int
    max_abs_logit_diff: float | None = None  # --verify: grown (new tiles zeroed) vs sum of inputs
    logit_scale: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "output": str(self.path) if self.path else None,
            "arch": self.meta.arch.to_dict(),
            "factor": self.layout.factor,
            "fused_inputs": self.layout.factor if self.layout.fused else 1,
            "init": self.init,
            "new_tiles": self.new_tiles,
            "parameters": self.parameters,
            "flops": self.meta.flops.to_dict(),
        }
        if self.max_abs_logit_diff is not None and self.logit_scale is not None:
            out["verify"] = logit_check(self.max_abs_logit_diff, self.logit_scale)
        return out


def check_fusable(metas: Sequence[tuple[Path, CheckpointMeta]]) -> None:
    """Every input template-mixing and small, all of one architecture and plan."""
    for path, meta in metas:
        if meta.kind != "template-mixing":
            raise MgtoolError(
                f"{path}: a {meta.kind} checkpoint; fuse needs template-mixing "
                "checkpoints (make one with `mgtool convert` or `mgtool train-small`)"
            )
        assert meta.plan is not None
        _check_small(meta.plan, str(path))
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


def _check_small(plan: TemplatePlan, where: str) -> None:
    for bank in plan.banks:
        if bank.sets != 1:
            raise MgtoolError(
                f"{where}: bank {bank.name} has {bank.sets} template sets; "
                "fuse takes small nets (one set per bank); is it already grown?"
            )
    for layer in plan.layers:
        if (layer.rows, layer.cols) != (1, 1):
            raise MgtoolError(
                f"{where}: layer {layer.name} is a {layer.rows}x{layer.cols} grid; "
                "fuse takes small nets (1x1 grids); is it already grown?"
            )


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


def _header_tensors(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Meta tensors of the file's shapes and the dtype names, from the header alone."""
    with safe_open(str(path), framework="pt") as f:
        names = list(f.keys())  # a safe_open handle is not iterable itself
        shapes = {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in names}
        dtypes = {k: str(f.get_slice(k).get_dtype()) for k in names}
    return shapes, dtypes


class _FileTensors(Mapping[str, Tensor]):
    def __init__(self, handle: Any):
        self._handle = handle

    def __getitem__(self, key: str) -> Tensor:
        return self._handle.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._handle.keys())

    def __len__(self) -> int:
        return len(self._handle.keys())


def _stream(paths: Sequence[Path]) -> Iterator[Mapping[str, Tensor]]:
    """One input open at a time, so only one input's tensors are read at once."""
    for path in paths:
        with safe_open(str(path), framework="pt") as handle:
            yield _FileTensors(handle)


def fuse(
    sources: Sequence[Path | str],
    out: Path | str | None,
    *,
    init: str = "orthogonal",
    factor: int | None = None,
    seed: int = 0,
    noise: float = 0.0,
    verify: bool = False,
    force: bool = False,
) -> FuseResult:
    """Fuse small template-mixing checkpoints (or grow one) into a ``factor``-times wider net.

    The first input is net 1 (role "given": the paper's FLOPs Norm does not charge it);
    the others are "input". ``verify`` also checks, before writing, that the grown net
    with its new tiles zeroed computes the sum of the inputs' logits (g times the one
    input's without fusion) within 1e-5 of the logit scale.
    """
    paths = [Path(p) for p in sources]
    if out is not None:
        check_output_path(out, force)
    g = _factor(len(paths), factor)
    get_init(init)  # refuse bad settings before reading anything
    check_range("noise", noise, low=0)  # NaN and Inf are refused too
    metas = [(p, read_meta(p)) for p in paths]
    check_fusable(metas)
    meta0 = metas[0][1]
    assert meta0.plan is not None
    layout = plan_fusion(meta0.arch, meta0.plan, g, fused=len(paths) > 1)
    expected = meta_model(layout.small_spec, layout.small_plan).state_dict()
    dtypes0: dict[str, str] | None = None
    for path in paths:
        shapes, dtypes = _header_tensors(path)
        check_keys(expected, shapes, str(path))
        if dtypes0 is not None and dtypes != dtypes0:
            key = next(k for k in dtypes if dtypes[k] != dtypes0[k])
            raise MgtoolError(f"{paths[0]} and {path} store {key} as {dtypes0[key]} vs {dtypes[key]}")
        dtypes0 = dtypes
    tensors, new = fuse_tensors(layout, _stream(paths), init=init, seed=seed, noise=noise)

    diff = scale = None
    if verify:
        diff, scale = _verify(layout, tensors, paths)

    parents = tuple(
        Parent(str(p), sha256_file(p), "given" if i == 0 else "input", m.flops.training)
        for i, (p, m) in enumerate(metas)
    )
    flops = Flops(
        training=sum(m.flops.training for _, m in metas),
        given=meta0.flops.training + sum(m.flops.given for _, m in metas[1:]),
    )
    # The data settings carry over when the inputs that record any agree (a converted net records none).
    datas = [m.data for _, m in metas if m.data is not None]
    meta = CheckpointMeta(
        kind="template-mixing",
        arch=layout.spec,
        plan=layout.plan,
        provenance=new_provenance(parents),
        flops=flops,
        data=datas[0] if datas and all(d == datas[0] for d in datas) else None,
    )
    path = save_checkpoint(out, tensors, meta, force=force) if out is not None else None
    parameters = sum(p.numel() for p in meta_model(layout.spec, layout.plan).parameters())  # trainable
    return FuseResult(path, meta, layout, init, new, parameters, diff, scale)


def _verify(layout: FusionLayout, tensors: dict[str, Tensor], paths: Sequence[Path]) -> tuple[float, float]:
    from mgtool.loading import load_checkpoint

    zeroed = dict(tensors)
    for layer, r, c in layout.new_tiles():
        key = coefficient_key(layer.name)
        if zeroed[key] is tensors[key]:
            zeroed[key] = tensors[key].clone()
        zeroed[key][r, c] = 0
    grown = _build(layout, zeroed, "fused model")
    inputs = [load_checkpoint(p)[0] for p in paths]
    if not layout.fused:
        inputs = inputs * layout.factor
    diff, scale = logit_difference(SumOfLogits(inputs), grown, layout.small_spec)
    if not diff <= RELATIVE_TOLERANCE * scale:
        raise MgtoolError(
            f"fused model (new tiles zeroed) differs from the sum of its inputs by {diff:.3g} in "
            f"the logits (scale {scale:.3g}, tolerance {RELATIVE_TOLERANCE:g} relative); nothing written"
        )
    return diff, scale


class SumOfLogits(nn.Module):
    """The function that ``--init zero`` fusion reproduces: the sum of the nets' logits."""

    def __init__(self, nets: Sequence[nn.Module]):
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([net(x) for net in self.nets]).sum(0)
