"""What ``mgtool run`` reports: one row per stage (accuracy, FLOPs spent, charged, FLOPs Norm)
and the content of summary.json."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mgtool.budget import flops_norm
from mgtool.checkpoint import read_meta
from mgtool.recipe import Recipe
from mgtool.runner import StageOutcome


@dataclass
class Summary:
    recipe: str
    out_dir: Path
    rows: list[dict[str, Any]]
    stages: list[StageOutcome]
    reference_flops: float
    wall_s: float
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "out_dir": str(self.out_dir),
            "rows": self.rows,
            "stages": [{"name": s.name, "output": str(s.output), "status": s.status, "wall_s": s.wall_s}
                       for s in self.stages],
            "reference_flops": self.reference_flops,
            "wall_s": self.wall_s,
            **self.extra,
        }



def stage_rows(recipe: Recipe, checkpoints: dict[str, Path], results: dict[str, Any], reference: float,
               charged_of_path: Callable[[Path, str], float]) -> list[dict[str, Any]]:
    """One row per stage: accuracy, FLOPs the stage spent, FLOPs charged so far and FLOPs Norm.

    Charged = the checkpoint's training FLOPs minus those of its *given* input (net 1);
    a stage's own spending is its charge minus that of the stage it continues from."""
    grown = "grown, at growth" + ("" if recipe.fuse.fusion else " (w/o fusion)")
    s = recipe.scratch
    labels = {
        "net1": "net 1 (given)" if recipe.net1 and recipe.net1.checkpoint else "net 1 (trained, given)",
        "net2": "net 2 (given, charged)" if recipe.net2.checkpoint else
                f"net 2 (growth point {recipe.net2.growth_point:g})",
        "grown": grown if recipe.method == "mixturegrowth" else f"grown ({recipe.method}), at growth",
        "final": "grown + fine-tuned",
        "match": "large, same FLOPs",
        "scratch": s and (f"{s.size}, from scratch" + ("" if s.kind == "plain" else " (template mixing)")
                          + (f", {s.flops_norm:g}X FLOPs" if s.flops_norm is not None else "")),
    }
    parent = {"grown": "net2" if "net2" in checkpoints else None, "final": "grown"}
    rows, charged_of = [], {}
    for role, path in checkpoints.items():
        meta = read_meta(path)
        charged = charged_of_path(path, role)
        before = charged_of.get(parent.get(role), 0.0) if parent.get(role) else 0.0
        spent = meta.flops.training if role == "net1" else charged - before
        charged_of[role] = charged
        r = results.get(role, {})
        a = meta.arch
        rows.append({"stage": role, "label": labels[role], "checkpoint": str(path),
                     "arch": f"{a.name} x{a.width:g}", "arch_full": a.describe(),
                     "top1": r.get("top1"), "top5": r.get("top5"), "flops_spent": spent,
                     "flops_charged": charged, "flops_norm": flops_norm(charged, reference)})
    return rows
