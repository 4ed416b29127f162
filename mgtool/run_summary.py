"""What ``mgtool run`` reports: one row per stage (accuracy, FLOPs spent, charged, FLOPs Norm),
accuracy at growth and per epoch after it, and the content of summary.json."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mgtool.budget import flops_norm
from mgtool.checkpoint import read_meta
from mgtool.recipe import Recipe
from mgtool.runner import Ledger, StageOutcome


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
        "grown_bn": "grown, BatchNorm recalibrated",
        "final": "grown + fine-tuned",
        "match": "large, same FLOPs",
        "scratch": s and (f"{s.size}, from scratch" + ("" if s.kind == "plain" else " (template mixing)")
                          + (f", {s.flops_norm:g}X FLOPs" if s.flops_norm is not None else "")),
    }
    parent = {"grown": "net2" if "net2" in checkpoints else None, "grown_bn": "grown",
              "final": "grown_bn" if "grown_bn" in checkpoints else "grown"}
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


PLOT_FILE = "after-growth.png"


def at_growth(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Top-1 of the grown net as fused and with BatchNorm recalibrated (None: not recalibrated),
    and the training images the recalibration saw."""
    by = {r["stage"]: r for r in rows}
    recal = by.get("grown_bn")
    seen = read_meta(Path(recal["checkpoint"])).training["recalibrated_bn"]["samples"] if recal else 0
    return {"fused_top1": by["grown"]["top1"], "recalibrated_top1": recal["top1"] if recal else None,
            "recalibration_samples": seen}


def after_growth(metrics: Path, reference: float, final_charged: float, *,
                 start: tuple[float, float] | None) -> list[dict[str, Any]]:
    """Test top-1 and lr after each fine-tune epoch (its metrics file), with the FLOPs Norm
    charged by then. ``start``: ``(top1, flops_norm)`` of the net the fine-tune started from,
    on the same test images, recorded as epoch 0 (its lr is null)."""
    if not metrics.is_file():
        return []
    lines = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    if not lines:
        return []
    end = lines[-1]["training_flops"]
    out = []
    if start is not None:
        out.append({"epoch": 0, "test_top1": start[0], "lr": None, "flops_norm": start[1]})
    for x in lines:  # FLOPs Norm after each epoch: the final charge less what was still to come
        out.append({"epoch": x["epoch"], "test_top1": x["test_top1"], "lr": x.get("lr"),
                    "flops_norm": flops_norm(final_charged - (end - x["training_flops"]), reference)})
    return out


def growth_report(recipe: Recipe, rows: list[dict[str, Any]], results: dict[str, Any], reference: float,
                  metrics: Path, *, final_charged: float, same_test_images: bool, plot: Path, ledger: Ledger,
                  log: Callable[[str], None]) -> dict[str, Any]:
    """summary.json's growth fields: accuracy at growth (as fused and recalibrated) and per
    epoch of the fine-tune from the growth point (``metrics``: the fine-tune's metrics file),
    drawn to ``plot`` (no growth: empty fields, no plot). ``same_test_images``: whether eval's
    test images are those the fine-tune tested on after each epoch."""
    if recipe.scratch is not None:
        return {"at_growth": None, "after_growth": [], "after_growth_plot": None}
    by = {r["stage"]: r for r in rows}
    start = by.get("grown_bn") or by["grown"]
    top1 = start["top1"] if same_test_images else results.get("growth_start", {}).get("top1")
    epochs = after_growth(metrics, reference, final_charged,
                          start=None if top1 is None else (top1, start["flops_norm"]))
    drawn = None
    if epochs:
        ledger.claim(plot)
        if plot_after_growth(epochs, recipe, plot, log=log):
            ledger.record(plot)
            drawn = plot
    return {"at_growth": at_growth(rows), "after_growth": epochs,
            "after_growth_plot": str(drawn) if drawn else None}


def init_label(recipe: Recipe) -> str:
    """The growth's coefficient init in words, for a plot legend."""
    f = recipe.fuse
    if recipe.method != "mixturegrowth":
        return recipe.method
    label = f.init + ("" if f.init_scale is None else f" s={f.init_scale:g}")
    label += "" if f.init_norm is None else f" ({f.init_norm} norm)"
    label += "".join(f" {k}={v}" for k, v in sorted(f.init_options.items()))
    return label + ("" if f.fusion else ", w/o fusion")


def plot_after_growth(epochs: list[dict[str, Any]], recipe: Recipe, out: Path,
                      log: Callable[[str], None]) -> bool:
    """Draw top-1 per epoch after growth (the paper's Fig. 3b analogue; one line: this run).
    False when matplotlib is missing (an optional extra)."""
    from mgtool.analysis.plot import PLOTS_HINT, matplotlib_available, plot_series

    if not matplotlib_available():
        log(f"after-growth plot not drawn: matplotlib is not installed ({PLOTS_HINT})")
        return False
    xs = [e["epoch"] for e in epochs]
    ys = [100 * e["test_top1"] for e in epochs]
    proto = recipe.finetune.train.protocol if recipe.finetune else None
    label = init_label(recipe) + (f", {proto} protocol" if proto else "") + (
        ", BatchNorm recalibrated" if recipe.recalibrate.samples else "")
    plot_series([(label, xs, ys, [0.0] * len(xs))], title=f"{recipe.name}: top-1 per epoch after growth "
                "(paper Fig. 3b analogue)", xlabel="fine-tune epochs after growth",
                ylabel="top-1 on the per-epoch test images (%)", out=out)
    return True
