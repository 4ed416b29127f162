"""The fusion layout: which layer is hidden, first or classifier, the grown plan, a rule per tensor.

Tiling (paper section 3.3, Fig. 2), for growth factor g and inputs 0..g-1:

* every bank gets ``sets = g``: set s holds input s's templates of that bank;
* hidden layer (output and input dimension grow): a g x g grid; row r mixes from
  set r, tile (r, r) is input r's layer, the off-diagonal tiles are new (``--init``);
* first layer (input dimension fixed, e.g. the image): g x 1, tile (r, 0) = input r's;
* classifier (output dimension fixed, e.g. the classes): 1 x g with one row over all
  sets; tile (0, c) has input c's coefficients in block c and zeros elsewhere;
* per-channel tensors (BatchNorm and LayerNorm affine and statistics, biases of growing
  layers; any tensor with exactly one dimension that grows g-fold, such as a ViT's
  ``cls_token`` and ``pos_embed`` along their last dimension) are concatenated
  [input 0; input 1; ...] along that dimension; the classifier bias is the sum of the
  inputs' biases; ``num_batches_tracked`` is the largest of the inputs';
* a layer the family names in ``Family.row_interleave`` (timm's fused qkv: p = 3) lists
  its output rows part by part over the inputs (``LayerPlan.row_interleave``), and its
  bias is concatenated the same way: ``[q_0 q_1 | k_0 k_1 | v_0 v_1]``.

So with ``--init zero`` a BatchNorm CNN computes, in eval mode, the sum of its inputs'
logits. With one input ("w/o fusion") every bank keeps its single set, every row mixes
from it, the diagonal tiles and the new half's per-channel tensors are copies of the
input's, and ``--init zero`` computes g times the input's logits.

Which layer is hidden, first or classifier is read off the shapes of the family's own
models at width 1x and gx (built once each, on the meta device), so no family needs a
list of names. Nothing here reads a file or allocates a tensor's memory.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fnmatch import fnmatchcase

import torch
from torch import nn

from mgtool.archs import ArchSpec, build_plain, get_family, grow_spec, resolve_spec
from mgtool.errors import MgtoolError, SettingError
from mgtool.model import TemplateMixingNet
from mgtool.plan import LayerPlan, TemplatePlan, mixable_layers

HIDDEN, FIRST, CLASSIFIER = "hidden", "first", "classifier"
CONCAT, SUM, MAX = "concat", "sum", "max"  # rules for tensors that are not banks/coefficients

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Concat:
    """How a CONCAT tensor grows: along ``dim``, each input's values split into ``parts``
    equal parts listed part by part over the inputs (1: plain concatenation)."""

    dim: int = 0
    parts: int = 1


@dataclass(frozen=True)
class NetShapes:
    """One template-mixing net's shapes, read off its family's model built once on the meta device."""

    spec: ArchSpec  # resolved
    plan: TemplatePlan
    weights: dict[str, Shape]  # mixed layer -> its plain weight shape
    state: dict[str, Shape]  # template-mixing state-dict key -> shape
    parameters: int  # trainable values

    @classmethod
    def of(cls, spec: ArchSpec, plan: TemplatePlan) -> NetShapes:
        """Build the model once; the TemplateMixingNet also checks the plan against the architecture."""
        with torch.device("meta"):
            net = build_plain(spec)
            weights = {n: tuple(m.weight.shape) for n, m in mixable_layers(net)}
            tm = TemplateMixingNet(net, plan)
        state = {k: tuple(v.shape) for k, v in tm.state_dict().items()}
        return cls(spec, plan, weights, state, sum(p.numel() for p in tm.parameters()))


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
    concat: dict[str, Concat]  # every CONCAT tensor -> its dimension and interleave
    shapes: dict[str, Shape]  # grown state-dict shapes
    small_shapes: dict[str, Shape]
    parameters: int  # trainable values of the grown net

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


def check_small(plan: TemplatePlan, where: str) -> None:
    """Fuse takes small nets: one template set per bank, 1x1 grids."""
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


def layer_roles(
    spec: ArchSpec, plan: TemplatePlan, factor: int,
    small: dict[str, Shape] | None = None, grown: dict[str, Shape] | None = None,
) -> dict[str, str]:
    """Each mixed layer's role, from its weight shape at width 1x and ``factor``x."""
    if small is None:
        small = {n: tuple(m.weight.shape) for n, m in mixable_layers(meta_model(spec))}
    if grown is None:
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


def row_interleaves(spec: ArchSpec, plan: TemplatePlan) -> dict[str, int]:
    """Mixed layer -> its row interleave, from the family's ``row_interleave`` globs."""
    patterns = get_family(spec.name).row_interleave
    out = {}
    for layer in plan.layers:
        parts = [p for glob, p in patterns.items() if fnmatchcase(layer.name, glob)]
        if parts:
            out[layer.name] = parts[0]
    return out


def grown_plan(
    plan: TemplatePlan, roles: dict[str, str], factor: int, fused: bool, interleave: dict[str, int] | None = None,
) -> TemplatePlan:
    """The plan of the fused net (see the module docstring for the tiling)."""
    g, sets = factor, factor if fused else 1
    interleave = interleave or {}
    banks = tuple(replace(b, sets=sets) for b in plan.banks)
    per_row = tuple((r if fused else 0,) for r in range(g))
    layers = []
    for layer in plan.layers:
        role = roles[layer.name]
        parts = interleave.get(layer.name, 1)
        if role == HIDDEN:
            layers.append(replace(layer, rows=g, cols=g, row_sets=per_row, row_interleave=parts))
        elif role == FIRST:
            layers.append(replace(layer, rows=g, cols=1, row_sets=per_row, row_interleave=parts))
        else:
            all_sets = tuple(range(g)) if fused else (0,)
            layers.append(replace(layer, rows=1, cols=g, row_sets=(all_sets,)))
    out = TemplatePlan(plan.templates_per_layer, plan.share, banks, tuple(layers))
    out.validate()
    return out


def check_factor(factor: int) -> int:
    if factor < 2:
        raise SettingError("factor", f"must be at least 2, got {factor}")
    return factor


def plan_fusion(spec: ArchSpec, plan: TemplatePlan, factor: int, fused: bool) -> FusionLayout:
    """Roles, grown plan and a rule for every other tensor; refuses what fits no rule."""
    check_factor(factor)
    check_small(plan, "the input")
    return layout_of(NetShapes.of(resolve_spec(spec), plan), factor, fused)


def layout_of(small: NetShapes, factor: int, fused: bool) -> FusionLayout:
    """The layout for an already checked small net (``check_small``, ``check_factor``)."""
    spec, plan = small.spec, small.plan
    big_spec = grow_spec(spec, factor)
    with torch.device("meta"):
        big_net = build_plain(big_spec)
    big_weights = {n: tuple(m.weight.shape) for n, m in mixable_layers(big_net)}
    roles = layer_roles(spec, plan, factor, small.weights, big_weights)
    interleave = row_interleaves(spec, plan)
    big_plan = grown_plan(plan, roles, factor, fused, interleave)
    with torch.device("meta"):
        big_tm = TemplateMixingNet(big_net, big_plan)  # also checks plan vs architecture
    big_sd = {k: tuple(v.shape) for k, v in big_tm.state_dict().items()}
    small_sd = small.state
    if set(small_sd) != set(big_sd):
        diff = sorted(set(small_sd) ^ set(big_sd))
        raise MgtoolError(f"{spec.name}: growing changes the state-dict keys ({diff[:4]}); fuse cannot map them")
    classifier_biases = {f"net.{n}.bias" for n, r in roles.items() if r == CLASSIFIER}
    interleaved_biases = {f"net.{n}.bias": p for n, p in interleave.items()}
    rules, concat = {}, {}
    for key, big in big_sd.items():
        if key.startswith("banks.") or key.endswith(".coefficients"):
            continue
        s = small_sd[key]
        grows = [d for d in range(len(s)) if big[d] != s[d]] if len(s) == len(big) else []
        if key.endswith("num_batches_tracked") and s == big == ():
            rules[key] = MAX
        elif len(grows) == 1 and big[grows[0]] == factor * s[grows[0]]:
            rules[key] = CONCAT
            concat[key] = Concat(grows[0], interleaved_biases.get(key, 1))
        elif key in classifier_biases and s == big:
            rules[key] = SUM
        else:
            raise MgtoolError(
                f"{spec.name}: no fusion rule for tensor {key} (shape {s} in the small net, {big} "
                f"grown); fuse concatenates tensors that grow along one dimension and sums classifier biases only"
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
        concat=concat,
        shapes=big_sd,
        small_shapes=dict(small_sd),
        parameters=sum(p.numel() for p in big_tm.parameters()),
    )
