"""Standard checkpoint -> template-mixing form, exactly (function preserved)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from mgtool.archs import ArchSpec, build_plain, input_size, resolve_spec
from mgtool.checkpoint import (
    METADATA_KEY,
    CheckpointMeta,
    Flops,
    check_keys,
    check_output_path,
    read_meta,
    read_raw_metadata,
    save_checkpoint,
)
from mgtool.errors import MgtoolError
from mgtool.mixing import decompose
from mgtool.model import TemplateMixingNet
from mgtool.plan import make_plan
from mgtool.provenance import Parent, new_provenance, sha256_file
from mgtool.weights import read_plain_weights

VERIFY_BATCH = 4
RELATIVE_TOLERANCE = 1e-5  # max |logit difference| / logit scale: convert, fuse --verify, net2net
OPTIONAL_KEYS = ("num_batches_tracked",)  # older checkpoints lack them; harmless to default


@dataclass(frozen=True)
class ConvertResult:
    path: Path | None
    max_abs_logit_diff: float
    logit_scale: float
    max_abs_weight_diff: float
    model: TemplateMixingNet
    meta: CheckpointMeta

    def to_dict(self) -> dict:
        return {
            "output": str(self.path) if self.path else None,
            **logit_check(self.max_abs_logit_diff, self.logit_scale),
            "max_abs_weight_diff": self.max_abs_weight_diff,
            "arch": self.meta.arch.to_dict(),
            "banks": len(self.meta.plan.banks) if self.meta.plan else 0,
        }


def to_template_mixing(
    net: nn.Module, *, templates: int = 2, share: str = "pairs", seed: int = 0
) -> TemplateMixingNet:
    """Wrap a plain network (consumed) so it generates exactly its current weights.

    Every bank's coefficient vectors are orthonormal and its templates are
    ``A^T W + (I - A^T A) N`` (see ``mixing.decompose``), so templates are diverse.
    """
    plan = make_plan(net, templates, share)
    modules = dict(net.named_modules())
    weights = {layer.name: modules[layer.name].weight.detach().clone() for layer in plan.layers}
    tm = TemplateMixingNet(net, plan)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bank in plan.banks:
            layers = plan.layers_of(bank.name)
            bank_templates, coefs = decompose([weights[la.name] for la in layers], templates, generator)
            tm.banks[bank.name].copy_(bank_templates.unsqueeze(0))
            for layer, row in zip(layers, coefs):
                modules[layer.name].coefficients.copy_(row.view(1, 1, -1))
    return tm


def fresh_template_mixing(spec: ArchSpec, *, templates: int = 2, share: str = "pairs",
                          seed: int = 0) -> TemplateMixingNet:
    """A new template-mixing net whose generated weights are the family's own init."""
    torch.manual_seed(seed)
    return to_template_mixing(build_plain(spec), templates=templates, share=share, seed=seed)


def logit_check(max_abs_diff: float, scale: float) -> dict[str, float]:
    """How a logit comparison is reported in --json output (convert, fuse --verify, grow)."""
    return {"max_abs_logit_diff": max_abs_diff, "logit_scale": scale,
            "relative_logit_diff": max_abs_diff / scale}


@torch.no_grad()
def logit_difference(a: nn.Module, b: nn.Module, spec: ArchSpec, seed: int = 0) -> tuple[float, float]:
    """Max |logits_a - logits_b| on a fixed batch in eval mode, and the logit scale (max |logits_a|)."""
    h, w = input_size(spec)
    x = torch.randn(VERIFY_BATCH, spec.in_chans, h, w, generator=torch.Generator().manual_seed(seed))
    ya, yb = a.eval()(x), b.eval()(x)
    return float((ya - yb).abs().max()), max(float(ya.abs().max()), 1e-3)


def infer_num_classes(arch: ArchSpec, sd: dict[str, Tensor], src: Path) -> int:
    """The row count of the classifier (the family's last Linear) in ``sd``."""
    probe = build_plain(replace(arch, num_classes=1))
    heads = [name for name, m in probe.named_modules() if isinstance(m, nn.Linear)]
    key = f"{heads[-1]}.weight" if heads else None
    if key is None or key not in sd or sd[key].ndim != 2:
        expected = {k for k in probe.state_dict() if not k.endswith(OPTIONAL_KEYS)}
        missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - set(probe.state_dict()))
        if missing or unexpected:  # the wrong family: say so before asking for --num-classes
            raise MgtoolError(f"{src}: keys do not match {arch.describe()}: missing {missing[:4]}, "
                              f"unexpected {unexpected[:4]}; check --arch, --width and --opt")
        raise MgtoolError(f"{src}: cannot infer the number of classes (no {key}); pass --num-classes")
    return int(sd[key].shape[0])


def load_into_plain(spec: ArchSpec, sd: dict[str, Tensor], where: str) -> nn.Module:
    net = build_plain(spec)
    expected = net.state_dict()
    for key in list(expected):
        if key.rsplit(".", 1)[-1] in OPTIONAL_KEYS and key not in sd:
            sd = {**sd, key: expected[key]}
    try:
        check_keys(expected, sd, where)
    except MgtoolError as e:
        raise MgtoolError(f"{e} (does the checkpoint match {spec.describe()}?)") from None
    net.load_state_dict(sd, strict=True)
    return net


def convert(
    src: Path | str,
    arch: ArchSpec | None = None,
    *,
    templates: int = 2,
    share: str = "pairs",
    seed: int = 0,
    out: Path | str | None = None,
    force: bool = False,
) -> ConvertResult:
    """Convert a plain checkpoint to template-mixing form and verify it exactly.

    ``arch`` may be omitted when ``src`` is an mgtool ``plain`` checkpoint, whose
    metadata names its architecture. Writes ``out`` (atomically) only if the
    converted model's logits match the original's within 1e-5 of the logit scale.
    """
    src = Path(src)
    if out is not None:
        check_output_path(out, force)
    parent_flops = 0.0
    raw = read_raw_metadata(src) if src.suffix == ".safetensors" else None
    if raw and METADATA_KEY in raw:
        meta_in = read_meta(src)
        if meta_in.kind != "plain":
            raise MgtoolError(f"{src}: already a template-mixing checkpoint; nothing to convert")
        if arch is not None and resolve_spec(arch).key() != resolve_spec(meta_in.arch).key():
            raise MgtoolError(f"{src}: its metadata says {meta_in.arch.describe()}, "
                              f"but --arch asked for {arch.describe()}")
        arch = meta_in.arch
        parent_flops = meta_in.flops.training
    if arch is None:
        raise MgtoolError(f"{src}: no mgtool metadata to name its architecture; pass --arch and --width")
    sd = read_plain_weights(src)
    if arch.num_classes < 1:
        arch = replace(arch, num_classes=infer_num_classes(arch, sd, src))
    spec = resolve_spec(arch)
    original = load_into_plain(spec, sd, str(src))
    reference = build_plain(spec)
    reference.load_state_dict(original.state_dict())
    tm = to_template_mixing(original, templates=templates, share=share, seed=seed)

    weight_diff = 0.0
    generated = tm.materialised_state_dict()
    for key, value in reference.state_dict().items():
        weight_diff = max(weight_diff, float((generated[key].double() - value.double()).abs().max()))
    diff, scale = logit_difference(reference, tm, spec)
    if not diff <= RELATIVE_TOLERANCE * scale:
        raise MgtoolError(
            f"{src}: converted model differs from the original by {diff:.3g} in the logits "
            f"(scale {scale:.3g}, tolerance {RELATIVE_TOLERANCE:g} relative); nothing written"
        )
    parent = Parent(str(src), sha256_file(src), "input", parent_flops)
    meta = CheckpointMeta(
        kind="template-mixing",
        arch=spec,
        plan=tm.plan,
        provenance=new_provenance((parent,)),
        flops=Flops(training=parent_flops),
    )
    path = save_checkpoint(out, tm.state_dict(), meta, force=force) if out is not None else None
    return ConvertResult(path, diff, scale, weight_diff, tm, meta)
