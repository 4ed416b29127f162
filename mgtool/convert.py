"""Standard checkpoint -> template-mixing form, exactly (function preserved, every weight checked)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mgtool.archs import ArchSpec, build_plain, resolve_spec
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
from mgtool.model import TemplateMixingNet
from mgtool.provenance import Parent, new_provenance, sha256_file
from mgtool.templates import to_template_mixing
from mgtool.verify import (
    LogitCheck,
    WeightCheck,
    compare_logits,
    compare_weights,
    require_exact_weights,
    require_preserved,
)
from mgtool.weights import read_plain_weights

OPTIONAL_KEYS = ("num_batches_tracked",)  # older checkpoints lack them; harmless to default


@dataclass(frozen=True)
class ConvertResult:
    path: Path | None
    logits: LogitCheck
    weights: WeightCheck
    model: TemplateMixingNet
    meta: CheckpointMeta
    dtype: torch.dtype

    @property
    def max_abs_logit_diff(self) -> float:
        return self.logits.max_abs_diff

    @property
    def logit_scale(self) -> float:
        return self.logits.scale

    @property
    def max_abs_weight_diff(self) -> float:
        return self.weights.max_abs_diff

    def to_dict(self) -> dict:
        return {
            "output": str(self.path) if self.path else None,
            **self.logits.to_dict(),
            "max_abs_weight_diff": self.weights.max_abs_diff,
            "max_relative_weight_diff": self.weights.worst_relative,
            "dtype": str(self.dtype).removeprefix("torch."),
            "arch": self.meta.arch.to_dict(),
            "banks": len(self.meta.plan.banks) if self.meta.plan else 0,
        }


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


def weight_dtype(sd: dict[str, Tensor]) -> torch.dtype:
    """float64 if any floating tensor is float64, else float32: widening never rounds."""
    floats = {v.dtype for v in sd.values() if v.is_floating_point()}
    return torch.float64 if torch.float64 in floats else torch.float32


def load_into_plain(spec: ArchSpec, sd: dict[str, Tensor], where: str) -> nn.Module:
    """The family's model in the weights' dtype (``weight_dtype``), loaded strictly."""
    net = build_plain(spec).to(weight_dtype(sd))
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
    source: dict[str, Any] | None = None,
) -> ConvertResult:
    """Convert a plain checkpoint to template-mixing form and verify it exactly.

    ``arch`` may be omitted when ``src`` is an mgtool ``plain`` checkpoint, whose
    metadata names its architecture. Writes ``out`` (atomically) only if the
    converted model's logits match the original's within 1e-5 of the logit scale and
    every generated weight matches its original within 1e-5 of that weight's own scale
    (max |original|). float64 weights stay float64. ``source`` (from ``mgtool.sources``)
    names the pretrained model ``src`` holds the weights of: the parent is recorded by that name.
    """
    src = Path(src)
    if out is not None:
        check_output_path(out, force, inputs=[src])
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
    dtype = weight_dtype(sd)
    reference = {k: v.clone() for k, v in original.state_dict().items()}
    reference_net = build_plain(spec).to(dtype)
    reference_net.load_state_dict(reference)
    tm = to_template_mixing(original, templates=templates, share=share, seed=seed)

    logits = compare_logits(reference_net, tm, spec)
    require_preserved(logits, f"{src}: converted model differs from the original")
    weights = compare_weights(reference, tm.materialised_state_dict())
    require_exact_weights(weights, f"{src}: converted model is not exact",
                          " (a layer far smaller than its bank-mate converts exactly with --share none)")
    parent = Parent(source["name"] if source else str(src), sha256_file(src), "input", parent_flops)
    meta = CheckpointMeta(
        kind="template-mixing",
        arch=spec,
        plan=tm.plan,
        provenance=new_provenance((parent,), source=source),
        flops=Flops(training=parent_flops),
    )
    path = save_checkpoint(out, tm.state_dict(), meta, force=force) if out is not None else None
    return ConvertResult(path, logits, weights, tm, meta, dtype)
