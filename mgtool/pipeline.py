"""``mgtool run``: a recipe's stages, each writing its own file in DIR, skipped when done.

Stages (in order): ``data`` (a subset, if the recipe asks for one), ``convert`` (net 1
given as a plain checkpoint) or ``net1`` (net 1 trained here), ``net2`` (train-small like
net 1, stopped at the growth point), ``fuse``, ``finetune``, ``export``, ``match`` (the
large net from scratch with the FLOPs growth spent, if asked) and ``eval``.

A stage is skipped when DIR/pipeline.json records it done with the same fingerprint
(the sha256 of its input files, which is what the outputs' provenance records, plus the
stage's resolved configuration) and its output still has the recorded sha256. A
training stage that was interrupted resumes from the engine's sidecar when its
fingerprint is unchanged. A stage whose inputs or configuration changed runs again and
replaces its own output; a file in DIR that the pipeline did not write is never
overwritten without ``force``.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mgtool.archs import ArchSpec, build_plain, grow_spec, resolve_spec
from mgtool.budget import epochs_for_flops, flops_norm, samples_per_epoch
from mgtool.checkpoint import atomic_write, read_meta
from mgtool.convert import convert
from mgtool.data import data_config, dataset_info, split_size
from mgtool.errors import MgtoolError
from mgtool.export import export
from mgtool.flops import flops_per_training_sample
from mgtool.fuse import fuse
from mgtool.provenance import sha256_file
from mgtool.recipe import Recipe, TrainSection
from mgtool.scratch import train_plain
from mgtool.subset import write_idx_subset
from mgtool.train import Runtime, TrainConfig, evaluate_checkpoint, finetune, train_config, train_small
from mgtool.train.api import like_seed
from mgtool.train.paths import run_paths

STATE_FILE = "pipeline.json"
SUMMARY_FILE = "summary.json"
RESOLVED_FILE = "recipe.resolved.yaml"
FILES = {
    "net1": "net1.safetensors",
    "convert": "net1.safetensors",
    "net2": "net2.safetensors",
    "fuse": "grown.safetensors",
    "finetune": "finetuned.safetensors",
    "export": "final.safetensors",
    "match": "large-match.safetensors",
    "eval": "eval.json",
}


@dataclass(frozen=True)
class StageOutcome:
    name: str
    output: Path
    status: str  # ran | skipped | resumed | given
    wall_s: float = 0.0


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


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


class _Ledger:
    """DIR/pipeline.json: per stage its fingerprint, output, output sha256 and status."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / STATE_FILE
        self.data: dict[str, Any] = {"stages": {}}
        if self.path.exists():
            try:
                self.data = json.loads(self.path.read_text())
            except json.JSONDecodeError:
                raise MgtoolError(f"{self.path}: corrupt pipeline state; delete it to start over") from None

    def entry(self, stage: str) -> dict[str, Any] | None:
        return self.data["stages"].get(stage)

    def set(self, stage: str, entry: dict[str, Any]) -> None:
        self.data["stages"][stage] = entry
        text = json.dumps(self.data, indent=1, sort_keys=True)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))

    def owns(self, output: Path) -> bool:
        return any(e.get("output") == output.name for e in self.data["stages"].values())


class Pipeline:
    def __init__(self, recipe: Recipe, out_dir: Path, *, force: bool = False, quiet: bool = False,
                 log: Callable[[str], None] | None = None):
        self.r, self.dir, self.force, self.quiet = recipe, out_dir, force, quiet
        self.log = log or (lambda msg: None)
        self.ledger = _Ledger(out_dir)
        self.outcomes: list[StageOutcome] = []
        rt = recipe.runtime
        self.runtime = Runtime(device=rt.device, precision=rt.precision, loader=rt.loader, workers=rt.workers,
                               quiet=quiet)

    # ------------------------------------------------------------------ stage machinery

    def stage(self, name: str, config: dict[str, Any], inputs: dict[str, Path],
              work: Callable[[Path, bool, bool], None], *, training: bool = False) -> Path:
        """Run ``work(output, resume, force)`` unless the ledger says it is done."""
        output = self.dir / FILES[name]
        fingerprint = _digest({"stage": name, "config": config,
                               "inputs": {k: sha256_file(p) for k, p in sorted(inputs.items())}})
        entry = self.ledger.entry(name)
        if (entry and entry.get("status") == "done" and entry.get("fingerprint") == fingerprint
                and output.exists() and sha256_file(output) == entry.get("sha256")):
            self.log(f"[dim]{name}: up to date, skipped ({output.name})[/]")
            self.outcomes.append(StageOutcome(name, output, "skipped"))
            return output
        resume = bool(training and entry and entry.get("status") == "running"
                      and entry.get("fingerprint") == fingerprint and run_paths(output).state.exists())
        if output.exists() and not resume and not self.ledger.owns(output) and not self.force:
            raise MgtoolError(f"{output}: exists and was not written by this pipeline; pass --force "
                              "to replace it, or choose another -o DIR")
        self.ledger.set(name, {"fingerprint": fingerprint, "output": output.name, "status": "running"})
        self.log(f"[bold]{name}[/]: {'resuming' if resume else 'running'} -> {output.name}")
        t0 = time.perf_counter()
        work(output, resume, not resume)
        wall = time.perf_counter() - t0
        self.ledger.set(name, {"fingerprint": fingerprint, "output": output.name, "status": "done",
                               "sha256": sha256_file(output), "wall_s": wall})
        self.outcomes.append(StageOutcome(name, output, "resumed" if resume else "ran", wall))
        return output

    def _train(self, section: TrainSection, seed: int, **values: Any) -> TrainConfig:
        return train_config(self.data.name, section, seed=seed, **values)

    # ------------------------------------------------------------------ stages

    def prepare_data(self) -> None:
        d = self.r.data
        source = data_config(d.name, d.dir, d.options, d.download)
        self.source = source
        if d.subset is None:
            self.data = source
            return
        folder = write_idx_subset(source, self.dir / "data", train_size=d.subset.train, test_size=d.subset.test,
                                  seed=d.subset.seed)
        self.data = data_config(d.name, folder, d.options)

    def net1(self) -> Path:
        n1 = self.r.net1
        if n1.checkpoint is not None:
            src = Path(n1.checkpoint)
            if not src.exists():
                raise MgtoolError(f"recipe net1.checkpoint: {src} does not exist")
            kind = read_meta(src).kind if src.suffix == ".safetensors" and _is_mgtool(src) else "plain"
            if kind == "template-mixing":
                self.outcomes.append(StageOutcome("net1", src, "given"))
                return src
            a = self.r.arch
            info = dataset_info(self.data)
            spec = ArchSpec(a.name, a.width, info.num_classes, info.shape[0], dict(a.options))
            config = {"arch": resolve_spec(spec).to_dict(), "templates": a.templates, "share": a.share,
                      "seed": n1.seed}
            return self.stage("convert", config, {"src": src}, lambda out, resume, force: convert(
                src, spec, templates=a.templates, share=a.share, seed=n1.seed, out=out, force=True))
        assert n1.train is not None
        a = self.r.arch
        train = self._train(n1.train, n1.seed)
        config = {"arch": a.__dict__, "train": train.to_dict(), "data": self.data.to_dict()}

        def work(out: Path, resume: bool, force: bool) -> None:
            train_small(out, self.data, train, self.runtime, arch=a.name, width=a.width, options=dict(a.options),
                        templates=a.templates, share=a.share, resume=resume, force=force)
        return self.stage("net1", config, self._data_inputs(), work, training=True)

    def net2(self, net1: Path) -> Path:
        n2 = self.r.net2
        section = n2.train or self.r.net1.train
        if section is None:
            raise MgtoolError("recipe net2.train: required when net 1 is given as a checkpoint "
                              "(there is no net 1 schedule to copy)")
        seed = like_seed(net1, n2.seed)
        train = self._train(section, seed, budget=n2.growth_point)
        config = {"train": train.to_dict(), "data": self.data.to_dict()}

        def work(out: Path, resume: bool, force: bool) -> None:
            train_small(out, self.data, train, self.runtime, like=net1, resume=resume, force=force)
        return self.stage("net2", config, {"net1": net1, **self._data_inputs()}, work, training=True)

    def fuse(self, net1: Path, net2: Path | None) -> Path:
        f = self.r.fuse
        sources = [net1] if net2 is None else [net1, net2]
        config = {"init": f.init, "factor": f.factor, "noise": f.noise, "seed": f.seed}
        inputs = {"net1": net1} if net2 is None else {"net1": net1, "net2": net2}
        return self.stage("fuse", config, inputs, lambda out, resume, force: fuse(
            sources, out, init=f.init, factor=f.factor, seed=f.seed, noise=f.noise, force=True))

    def finetune(self, grown: Path) -> Path:
        ft = self.r.finetune
        train = self._train(ft.train, ft.seed)
        config = {"train": train.to_dict(), "data": self.data.to_dict()}

        def work(out: Path, resume: bool, force: bool) -> None:
            finetune(grown, out, self.data, train, self.runtime, resume=resume, force=force)
        return self.stage("finetune", config, {"grown": grown, **self._data_inputs()}, work, training=True)

    def export(self, tuned: Path) -> Path:
        return self.stage("export", {}, {"finetuned": tuned},
                          lambda out, resume, force: export(tuned, out, force=True))

    def match(self, charged: float, tuned: Path) -> Path:
        """The large net from scratch with the FLOPs the growth charged (Large Match)."""
        ref = self.r.reference
        spec = read_meta(tuned).arch
        # From scratch: net 1's recipe (or the data set's), never a post-growth protocol; a complete schedule.
        section = self.r.net1.train or TrainSection(batch_size=ref.batch_size)
        train0 = self._train(section, ref.seed, epochs=1)
        epochs, budget = epochs_for_flops(charged, self.large_per_sample(train0.batch_size),
                                          samples_per_epoch(self.train_size(), train0.batch_size))
        train = self._train(section, ref.seed, epochs=epochs, budget=budget)
        config = {"arch": spec.to_dict(), "train": train.to_dict(), "data": self.data.to_dict()}

        def work(out: Path, resume: bool, force: bool) -> None:
            train_plain(out, spec, self.data, train, self.runtime, resume=resume, force=force)
        return self.stage("match", config, self._data_inputs(), work, training=True)

    def evaluate(self, checkpoints: dict[str, Path]) -> dict[str, Any]:
        e = self.r.eval
        data = self.data if e.test_set == "subset" else self.source
        config = {"test_set": e.test_set, "limit": e.limit, "data": data.to_dict()}
        out = self.dir / FILES["eval"]

        def work(path: Path, resume: bool, force: bool) -> None:
            results = {}
            for role, ckpt in checkpoints.items():
                r = evaluate_checkpoint(ckpt, data, limit=e.limit, batch_size=e.batch_size,
                                        device=self.r.runtime.device, precision=self.r.runtime.precision,
                                        workers=self.r.runtime.workers)
                results[role] = {"checkpoint": str(ckpt), **{k: r[k] for k in ("top1", "top5", "loss", "samples")}}
                self.log(f"  eval {role}: top-1 {r['top1']:.2%} on {r['samples']} {data.name} test images")
            text = json.dumps(results, indent=1)
            atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        self.stage("eval", config, dict(checkpoints), work)
        return json.loads(out.read_text())

    # ------------------------------------------------------------------ FLOPs

    def _data_inputs(self) -> dict[str, Path]:
        """The subset's files are inputs too (a different subset means different data)."""
        folder = self.dir / "data"
        if self.r.data.subset is None:
            return {}
        return {f"data/{p.name}": p for p in sorted(folder.glob("*.gz"))}

    def train_size(self) -> int:
        """The training images actually there (dataset_info gives the full set's nominal size)."""
        return split_size(self.data, "train")

    def large_per_sample(self, batch_size: int) -> float:
        spec = grow_spec(self.small_spec(), self.r.fuse.factor)
        with torch.device("cpu"):
            model = build_plain(spec)
        info = dataset_info(self.data)
        return flops_per_training_sample(model, info.shape, batch_size)

    def small_spec(self) -> ArchSpec:
        info = dataset_info(self.data)
        a = self.r.arch
        return resolve_spec(ArchSpec(a.name, a.width, info.num_classes, info.shape[0], dict(a.options)))

    def reference_flops(self) -> float:
        """The large net trained from scratch for ``reference.epochs``: the paper's 1.0X."""
        batch = self.r.reference.batch_size or self._train(self.r.finetune.train, 0).batch_size
        return self.large_per_sample(batch) * samples_per_epoch(self.train_size(), batch) * self.r.reference.epochs


def _is_mgtool(path: Path) -> bool:
    from mgtool.checkpoint import METADATA_KEY, read_raw_metadata

    try:
        raw = read_raw_metadata(path)
    except MgtoolError:
        return False
    return bool(raw) and METADATA_KEY in raw


def run_pipeline(recipe: Recipe, out_dir: Path | str, *, command: str | None = None, force: bool = False,
                 quiet: bool = False, log: Callable[[str], None] | None = None) -> Summary:
    """Run (or finish) every stage of ``recipe`` in ``out_dir``; write summary.json."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if recipe.runtime.threads:
        torch.set_num_threads(recipe.runtime.threads)
    resolved = recipe.to_yaml(command)
    atomic_write(out_dir / RESOLVED_FILE, lambda tmp: Path(tmp).write_text(resolved))
    p = Pipeline(recipe, out_dir, force=force, quiet=quiet, log=log)
    p.prepare_data()
    net1 = p.net1()
    net2 = p.net2(net1) if recipe.fuse.fusion else None
    grown = p.fuse(net1, net2)
    tuned = p.finetune(grown)
    final = p.export(tuned)
    meta_final = read_meta(final)
    charged = meta_final.flops.training - meta_final.flops.given
    match = p.match(charged, tuned) if recipe.reference.train_match else None
    checkpoints = {"net1": net1}
    if net2 is not None:
        checkpoints["net2"] = net2
    checkpoints.update({"grown": grown, "final": final})
    if match is not None:
        checkpoints["match"] = match
    results = p.evaluate(checkpoints)
    reference = p.reference_flops()
    rows = _rows(recipe, checkpoints, results, reference)
    summary = Summary(recipe.name, out_dir, rows, p.outcomes, reference, time.perf_counter() - t0,
                      extra={"flops_charged": charged, "flops_norm": flops_norm(charged, reference),
                             "reference_epochs": recipe.reference.epochs,
                             "data": p.data.to_dict(), "eval_test_set": recipe.eval.test_set})
    path = out_dir / SUMMARY_FILE
    text = json.dumps(summary.to_dict(), indent=1)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))
    summary.path = path
    return summary


def _rows(recipe: Recipe, checkpoints: dict[str, Path], results: dict[str, Any],
          reference: float) -> list[dict[str, Any]]:
    """One row per stage: accuracy, FLOPs the stage spent, FLOPs charged so far and FLOPs Norm.

    Charged = the checkpoint's training FLOPs minus those of its *given* inputs (net 1);
    a stage's own spending is its charge minus that of the stage it continues from."""
    labels = {
        "net1": "net 1 (given)" if recipe.net1.checkpoint else "net 1 (trained, given)",
        "net2": f"net 2 (growth point {recipe.net2.growth_point:g})",
        "grown": "grown, at growth" + ("" if recipe.fuse.fusion else " (w/o fusion)"),
        "final": "grown + fine-tuned",
        "match": "large, same FLOPs",
    }
    parent = {"net1": None, "net2": None, "grown": "net2" if "net2" in checkpoints else None,
              "final": "grown", "match": None}
    rows, charged_of = [], {}
    for role, path in checkpoints.items():
        meta = read_meta(path)
        charged = 0.0 if role == "net1" else meta.flops.training - meta.flops.given
        before = charged_of.get(parent[role], 0.0) if parent[role] else 0.0
        spent = meta.flops.training if role == "net1" else charged - before
        charged_of[role] = charged
        r = results.get(role, {})
        a = meta.arch
        rows.append({"stage": role, "label": labels[role], "checkpoint": str(path),
                     "arch": f"{a.name} x{a.width:g}", "arch_full": a.describe(),
                     "top1": r.get("top1"), "top5": r.get("top5"), "flops_spent": spent,
                     "flops_charged": charged, "flops_norm": flops_norm(charged, reference)})
    return rows
