"""A model card (markdown) from one checkpoint's metadata, and the check of its parents' hashes.

Every user-controlled value (paths, command lines, names) goes through ``literal``:
control characters are written as escapes, so a card never carries a terminal escape or a
line break a reader did not write.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mgtool.checkpoint import CheckpointMeta
from mgtool.provenance import sha256_file, stage_of


def literal(value: Any) -> str:
    """``value`` as one line of text: control characters escaped (``\\n``, ``\\x1b``), ``|`` escaped."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif code < 0x20 or 0x7F <= code < 0xA0 or ch in "\u2028\u2029":
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        elif ch == "|":
            out.append("\\|")
        else:
            out.append(ch)
    return "".join(out)


def _command(argv: Any) -> str:
    return literal(" ".join(str(a) for a in argv or []))


def _num(value: Any, spec: str = ".4g") -> str:
    """A recorded number formatted; anything else a header may hold (a string, null) shown literally."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return format(value, spec)
    return "" if value is None else literal(value)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _flops(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def model_card(meta: CheckpointMeta, *, name: str, load_hint: str, eval_results: dict[str, Any] | None = None) -> str:
    """The card of a checkpoint: lineage, growth, FLOPs per stage, data and accuracy, version, loading."""
    prov = meta.provenance
    records = [r for r in prov.lineage if isinstance(r, dict)]
    cumulative = {str(r.get("sha256")): _flops(r.get("training_flops")) for r in records}
    lines = [
        "---", "library_name: timm", "tags:", "- image-classification", "- timm", "- mgtool", "- mixturegrowth",
        "---", f"# {literal(name)}", "",
        f"A {literal(meta.arch.describe())} network made with mgtool {literal(prov.mgtool_version)} "
        "(MixtureGrowth, Pham et al., WACV 2024). This card is generated from the checkpoint's metadata.", "",
        "## Lineage (oldest first)", "",
        "| # | stage | sha256 | file | command | FLOPs this stage | FLOPs total | top-1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, r in enumerate(records, start=1):
        total = _flops(r.get("training_flops"))
        parents = r.get("parents") if isinstance(r.get("parents"), list) else []
        spent = total - sum(cumulative.get(str(p), 0.0) for p in parents)
        lines.append(f"| {n} | {literal(r.get('stage'))} | `{literal(r.get('sha256'))}` | {literal(r.get('path'))} | "
                     f"`{_command(r.get('command'))}` | {_num(spent)} | {_num(total)} | "
                     f"{_num(r.get('test_top1'), '.4f')} |")
    own_spent = meta.flops.training - sum(cumulative.get(p.sha256, p.training_flops) for p in prov.parents)
    top1 = _dict(meta.training).get("test_top1")
    lines.append(f"| {len(records) + 1} | {literal(_stage(meta))} (this file) | - | - | `{_command(prov.command)}` | "
                 f"{_num(own_spent)} | {_num(meta.flops.training)} | {_num(top1, '.4f')} |")
    lines += ["", "Parents of this file: " + ("; ".join(
        f"{literal(p.path)} ({literal(p.role)}) sha256 `{literal(p.sha256)}`" for p in prov.parents) or "none") + "."]
    lines += ["", "## Growth", ""] + _growth_lines(records, meta)
    lines += ["", "## Data and accuracy", ""] + _data_lines(meta, records, eval_results)
    lines += ["", "## Training FLOPs", "",
              f"{_num(meta.flops.training)} in the whole lineage (fvcore multiply-adds, training = 3 x forward "
              f"per sample), of which {_num(meta.flops.given)} on given inputs (net 1, not charged)."]
    lines += ["", "## How to load", "", load_hint, "",
              "Check each parent's hash against your files: `mgtool info CHECKPOINT --card --check-parents`.", ""]
    return "\n".join(lines)


def _stage(meta: CheckpointMeta) -> str:
    return stage_of(meta.training, meta.provenance.command, str(meta.kind))


def _growth_lines(records: list[dict[str, Any]], meta: CheckpointMeta) -> list[str]:
    grown = [r for r in records if isinstance(r.get("growth"), dict)]
    if isinstance(_dict(meta.training).get("growth"), dict):
        grown.append({"stage": f"{_stage(meta)} (this file)", "growth": meta.training["growth"]})
    if not grown:
        return ["No growth step in this lineage."]
    out = []
    for r in grown:
        g = r["growth"]
        s = g.get("tile_ratio") if isinstance(g.get("tile_ratio"), dict) else {}
        ratio = (f"tile ratio s median {_num(s['median'], '.3g')} (min {_num(s['min'], '.3g')}, "
                 f"max {_num(s['max'], '.3g')})" if {"median", "min", "max"} <= set(s) else "tile ratio s not recorded")
        out.append(f"- {literal(r.get('stage'))}: {literal(g.get('method'))}, x{literal(g.get('factor'))} from "
                   f"{literal(g.get('fused_inputs'))} net(s); init {literal(g.get('init'))} "
                   f"{literal(g.get('init_options') or {})}, init scale {literal(g.get('init_scale'))}; {ratio}")
    return out


def _data_lines(meta: CheckpointMeta, records: list[dict[str, Any]], eval_results: dict[str, Any] | None) -> list[str]:
    data = _dict(meta.data)
    out = [f"- data set: {literal(data.get('name', 'none recorded'))} "
           f"(options {literal(data.get('options', {}))})"]
    sources = [r["source"] for r in records if isinstance(r.get("source"), dict)]
    if meta.provenance.source:
        sources.append(meta.provenance.source)
    for src in sources:
        out.append(f"- pretrained start: {literal(src.get('name'))}, revision {literal(src.get('revision'))}, "
                   f"tag {literal(src.get('pretrained_tag'))}, weights sha256 `{literal(src.get('weights_sha256'))}`")
    training = _dict(meta.training)
    if "test_top1" in training:
        out.append(f"- recorded at the end of {literal(_stage(meta))}: top-1 {_num(training['test_top1'], '.4f')}, "
                   f"top-5 {_num(training.get('test_top5'), '.4f')} on the test split")
    if eval_results:
        out.append(f"- `mgtool eval`: top-1 {literal(eval_results.get('top1'))}, top-5 "
                   f"{literal(eval_results.get('top5'))} on {literal(eval_results.get('samples'))} images")
    return out


@dataclass(frozen=True)
class ParentCheck:
    path: str
    recorded: str
    found: str | None  # the file's sha256 now, None when the file is not there

    @property
    def status(self) -> str:
        if self.found is None:
            return "missing"
        return "ok" if self.found == self.recorded else "MISMATCH"

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "recorded": self.recorded, "found": self.found, "status": self.status}


def check_parents(meta: CheckpointMeta, base: Path) -> list[ParentCheck]:
    """Every recorded ancestor's hash against the file at its recorded path (as given, then under ``base``)."""
    seen: dict[str, ParentCheck] = {}
    entries = [(str(r.get("path")), str(r.get("sha256"))) for r in meta.provenance.lineage]
    entries += [(p.path, p.sha256) for p in meta.provenance.parents]
    for path, recorded in entries:
        if path in seen:
            continue
        candidates = [Path(path), base / path]
        found = next((c for c in candidates if c.is_file()), None)
        seen[path] = ParentCheck(path, recorded, sha256_file(found) if found is not None else None)
    return list(seen.values())
