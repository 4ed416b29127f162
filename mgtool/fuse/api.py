"""``fuse``: validate -> plan -> stream -> write; ``fuse_models`` for models in memory."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mgtool.archs import ArchSpec, build_plain, get_family
from mgtool.checkpoint import (
    CheckpointMeta,
    Flops,
    check_keys,
    check_output_path,
    read_tensors,
    save_checkpoint,
    stream_tensors,
)
from mgtool.coef_init import InitSettings, resolve_init
from mgtool.errors import MgtoolError
from mgtool.fuse.assembly import LayerCap, fuse_tensors
from mgtool.fuse.inputs import FuseInputs, growth_factor, validate
from mgtool.fuse.layout import FusionLayout, coefficient_key, layout_of, plan_fusion
from mgtool.fuse.ratios import TileRatios, coefficient_ratios, held_range_warning, ratio_report, tile_ratios
from mgtool.loading import build_model
from mgtool.model import TemplateMixingNet
from mgtool.provenance import Parent, new_provenance, sha256_file
from mgtool.verify import LogitCheck, VerifiedResult, compare_logits, require_preserved


@dataclass(frozen=True)
class FuseResult(VerifiedResult):
    path: Path | None
    meta: CheckpointMeta
    layout: FusionLayout
    init: InitSettings
    new_tiles: int
    parameters: int
    tile_ratio: TileRatios | None = None  # realised s of the new tiles
    verify: LogitCheck | None = None  # --verify: grown (new tiles zeroed) vs sum of inputs
    coefficient_ratio: TileRatios | None = None  # new coefficient vectors' norms over the diagonal ones'
    caps: dict[str, LayerCap] | None = None  # --init-norm capped: what the cap did, per layer

    @property
    def warning(self) -> str | None:
        """Set when the new tiles start outside the range where a measured arm held up."""
        return held_range_warning(self.tile_ratio, self.coefficient_ratio)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "output": str(self.path) if self.path else None,
            "arch": self.meta.arch.to_dict(),
            "factor": self.layout.factor,
            "fused_inputs": self.layout.factor if self.layout.fused else 1,
            **self.init.to_dict(),
            "new_tiles": self.new_tiles,
            "parameters": self.parameters,
            "flops": self.meta.flops.to_dict(),
            **ratio_report(self.tile_ratio, self.coefficient_ratio),
        }
        if self.caps is not None:
            out["init_cap_per_layer"] = {name: cap.to_dict() for name, cap in self.caps.items()}
        if self.verify is not None:
            out["verify"] = self.verify.to_dict()
        return out


def fuse(
    sources: Sequence[Path | str],
    out: Path | str | None,
    *,
    init: str = "orthogonal",
    factor: int | None = None,
    seed: int = 0,
    noise: float = 0.0,
    init_scale: float | None = None,
    init_norm: str | None = None,
    init_options: Mapping[str, Any] | None = None,
    verify: bool = False,
    force: bool = False,
) -> FuseResult:
    """Fuse small template-mixing checkpoints (or grow one) into a ``factor``-times wider net.

    The first input is net 1 (role "given": the paper's FLOPs Norm does not charge it);
    the others are "input". ``init_scale`` S sets every new tile's norm to S times the
    mean norm of its layer's diagonal tiles; ``init_norm``, ``noise`` and
    ``init_options`` are the initialiser's own settings (see ``mgtool.coef_init``).
    ``verify`` also checks, before writing, that the grown net with its new tiles
    zeroed computes the sum of the inputs' logits (g times the one input's without
    fusion) within 1e-5 of the logit scale.
    """
    if out is not None:
        check_output_path(out, force, inputs=sources)
    settings = resolve_init(init, scale=init_scale, noise=noise, init_norm=init_norm, options=init_options)
    inputs = validate([Path(p) for p in sources], factor)  # every check, once
    if verify:
        check_verifiable(inputs.small.spec, inputs.fused)
    layout = layout_of(inputs.small, inputs.factor, inputs.fused)  # plan
    grown = fuse_tensors(layout, stream_tensors(inputs.paths), settings, seed=seed)  # stream
    tensors = grown.tensors
    check = _verify(layout, tensors, inputs) if verify else None
    ratios = tile_ratios(layout.plan, tensors, grown.grams)  # the assembly's Gram matrices, not again
    coefs = coefficient_ratios(layout.plan, tensors)
    caps = grown.caps if settings.cap is not None else None
    growth = {"method": "mixturegrowth", "factor": layout.factor,
              "fused_inputs": layout.factor if layout.fused else 1, **settings.to_dict(),
              "tile_ratio": ratios.to_dict() if ratios is not None else None}
    meta = _grown_meta(layout, inputs, growth)
    path = save_checkpoint(out, tensors, meta, force=force) if out is not None else None  # write
    return FuseResult(path, meta, layout, settings, grown.new_tiles, layout.parameters, ratios, check, coefs, caps)


def fuse_models(
    models: Sequence[TemplateMixingNet],
    spec: ArchSpec,
    *,
    factor: int | None = None,
    init: str = "orthogonal",
    seed: int = 0,
    noise: float = 0.0,
    init_scale: float | None = None,
    init_norm: str | None = None,
    init_options: Mapping[str, Any] | None = None,
) -> tuple[TemplateMixingNet, FusionLayout]:
    """In-memory fusion of small template-mixing models (for the library and tests)."""
    g = growth_factor(len(models), factor)
    settings = resolve_init(init, scale=init_scale, noise=noise, init_norm=init_norm, options=init_options)
    plan = models[0].plan
    for i, m in enumerate(models[1:], start=1):
        if m.plan != plan:
            raise MgtoolError(f"model {i} has a different template plan from model 0")
    layout = plan_fusion(spec, plan, g, fused=len(models) > 1)
    grown = fuse_tensors(layout, (m.state_dict() for m in models), settings, seed=seed)
    return _build(layout, grown.tensors), layout


def _build(layout: FusionLayout, tensors: dict[str, Tensor]) -> TemplateMixingNet:
    model = TemplateMixingNet(build_plain(layout.spec), layout.plan)
    check_keys(model.state_dict(), tensors, "fused model")
    model.load_state_dict(tensors, strict=True)
    return model


def _grown_meta(layout: FusionLayout, inputs: FuseInputs, growth: dict[str, Any]) -> CheckpointMeta:
    metas = [i.meta for i in inputs.inputs]
    parents = tuple(
        Parent(str(i.path), sha256_file(i.path), "given" if n == 0 else "input", i.meta.flops.training)
        for n, i in enumerate(inputs.inputs)
    )
    flops = Flops(
        training=sum(m.flops.training for m in metas),
        given=metas[0].flops.training + sum(m.flops.given for m in metas[1:]),
    )
    # The data settings carry over when the inputs that record any agree (a converted net records none).
    datas = [m.data for m in metas if m.data is not None]
    return CheckpointMeta(
        kind="template-mixing",
        arch=layout.spec,
        plan=layout.plan,
        provenance=new_provenance(parents),
        flops=flops,
        data=datas[0] if datas and all(d == datas[0] for d in datas) else None,
        training={"growth": growth},  # how it grew, for the lineage and the model card
    )


def check_verifiable(spec: ArchSpec, fused: bool) -> None:
    """``--verify`` checks the sum of the inputs' logits: refused where the family says fusion is not that."""
    if fused and not get_family(spec.name).fusion_sums_logits:
        raise MgtoolError(
            f"--verify: fusing {spec.name} nets with zero new tiles does not compute the sum of their logits "
            "(a LayerNorm normalises over the joined streams), so there is nothing exact to verify; "
            "--verify applies to one input (w/o fusion) for this family"
        )


def _verify(layout: FusionLayout, tensors: dict[str, Tensor], inputs: FuseInputs) -> LogitCheck:
    zeroed = dict(tensors)
    for layer, r, c in layout.new_tiles():
        key = coefficient_key(layer.name)
        if zeroed[key] is tensors[key]:
            zeroed[key] = tensors[key].clone()
        zeroed[key][r, c] = 0
    grown = _build(layout, zeroed)
    nets = []
    for i in inputs.inputs:  # headers were checked in validate: build and load, nothing else
        net = build_model(i.meta)
        net.load_state_dict(read_tensors(i.path), strict=True)
        nets.append(net)
    if not layout.fused:
        nets = nets * layout.factor
    check = compare_logits(SumOfLogits(nets), grown, layout.small_spec)
    return require_preserved(check, "fused model (new tiles zeroed) differs from the sum of its inputs")


class SumOfLogits(nn.Module):
    """The function that ``--init zero`` fusion reproduces: the sum of the nets' logits."""

    def __init__(self, nets: Sequence[nn.Module]):
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x: Tensor) -> Tensor:
        return torch.stack([net(x) for net in self.nets]).sum(0)
