"""Template-mixing checkpoint -> plain checkpoint with the family's own key names."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mgtool.archs import build_plain
from mgtool.checkpoint import CheckpointMeta, check_keys, check_output_path, save_checkpoint
from mgtool.errors import MgtoolError
from mgtool.loading import load_checkpoint
from mgtool.model import TemplateMixingNet
from mgtool.provenance import Parent, new_provenance, sha256_file


@dataclass(frozen=True)
class ExportResult:
    path: Path
    meta: CheckpointMeta
    parameters: int

    def to_dict(self) -> dict:
        return {"output": str(self.path), "arch": self.meta.arch.to_dict(), "parameters": self.parameters}


def export(src: Path | str, out: Path | str, *, force: bool = False) -> ExportResult:
    """Materialise every generated weight; the result loads strictly into the family's
    own model (for timm families, ``timm.create_model(name, **width_kwargs)``)."""
    src = Path(src)
    check_output_path(out, force, inputs=[src])
    model, meta = load_checkpoint(src)
    if not isinstance(model, TemplateMixingNet):
        raise MgtoolError(f"{src}: already a plain checkpoint; nothing to export")
    sd = model.materialised_state_dict()
    plain = build_plain(meta.arch)
    check_keys(plain.state_dict(), sd, f"{src} (exported)")
    plain.load_state_dict(sd, strict=True)
    parent = Parent(str(src), sha256_file(src), "input", meta.flops.training)
    out_meta = CheckpointMeta(
        kind="plain",
        arch=meta.arch,
        plan=None,
        provenance=new_provenance((parent,)),
        flops=meta.flops,
        data=meta.data,
    )
    path = save_checkpoint(out, sd, out_meta, force=force)
    return ExportResult(path, out_meta, sum(v.numel() for v in sd.values()))
