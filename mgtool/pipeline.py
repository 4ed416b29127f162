"""``mgtool run``: the MixtureGrowth stage graph on the runner (mgtool.runner).

Stages (in order): ``data`` (a subset, if the recipe asks for one), ``convert`` (net 1
given as a plain checkpoint) or ``net1`` (net 1 trained here), ``net2`` (train-small like
net 1, stopped at the growth point), ``fuse``, ``recalibrate`` (BatchNorm statistics
re-estimated; the fine-tune starts from this net; ``recalibrate.samples: 0`` skips it),
``finetune``, ``export``, ``match`` (the large net from scratch with the FLOPs growth spent,
on a complete schedule, if asked) and ``eval``. A baseline recipe (``method: random`` or
``net2net``) runs ``plain1`` (net 1 exported) and ``grow`` instead of net2/fuse, and its
fine-tuned net is the final one. A ``scratch:`` recipe trains one net from scratch
(``scratch``) and evaluates it. The summary records accuracy per epoch after growth and
draws it (after-growth.png, the paper's Fig. 3b analogue for this run).

The runner's ledger (DIR/pipeline.json) skips a stage that is done with the same
fingerprint (its settings and the sha256 of its inputs) and an intact output, resumes an
interrupted training stage, reruns the rest, and never replaces a file in DIR it did not
write (summary.json, recipe.resolved.yaml, metrics files included) without ``force``.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mgtool.archs import ArchSpec, build_plain, grow_spec, resolve_spec
from mgtool.budget import epochs_for_flops, flops_norm, samples_per_epoch
from mgtool.checkpoint import atomic_write, read_meta
from mgtool.convert import convert
from mgtool.data import DataConfig, data_config, dataset_info
from mgtool.errors import MgtoolError
from mgtool.export import export
from mgtool.fuse import fuse
from mgtool.grow_baselines import grow
from mgtool.loading import build_model, load_checkpoint
from mgtool.pipeline_plan import PipelinePlan
from mgtool.recalibrate import batchnorm_layers, recalibrate_bn
from mgtool.recipe import Recipe, TrainSection
from mgtool.run_summary import PLOT_FILE, Summary, growth_report, stage_rows
from mgtool.runner import Ledger, Stage, StageOutcome
from mgtool.scratch import train_plain
from mgtool.subset import check_apart, write_subset
from mgtool.templates import fresh_template_mixing
from mgtool.train import Runtime, evaluate_checkpoint, finetune, train_small
from mgtool.train.api import like_seed, require_small_template_mixing
from mgtool.train.paths import run_paths

STATE_FILE = "pipeline.json"
SUMMARY_FILE = "summary.json"
RESOLVED_FILE = "recipe.resolved.yaml"
FILES = {
    "net1": "net1.safetensors",
    "convert": "net1.safetensors",
    "net2": "net2.safetensors",
    "fuse": "grown.safetensors",
    "recalibrate": "grown.bn.safetensors",
    "plain1": "net1-plain.safetensors",
    "grow": "grown.safetensors",
    "finetune": "finetuned.safetensors",
    "export": "final.safetensors",
    "match": "large-match.safetensors",
    "scratch": "scratch.safetensors",
    "eval": "eval.json",
}


class Pipeline(PipelinePlan):
    """The MixtureGrowth stage graph (and its baselines and from-scratch nets) on a ``Ledger``."""

    def __init__(self, recipe: Recipe, out_dir: Path, ledger: Ledger, *, quiet: bool = False,
                 log: Callable[[str], None] | None = None):
        self.r, self.dir, self.ledger, self.quiet = recipe, out_dir, ledger, quiet
        self.log = log or (lambda msg: None)
        self.outcomes: list[StageOutcome] = []
        rt = recipe.runtime
        self.runtime = Runtime(device=rt.device, precision=rt.precision, loader=rt.loader, workers=rt.workers,
                               quiet=quiet)
        self.net1_flops = 0.0  # net 1's training FLOPs: given, never charged

    # ------------------------------------------------------------------ stage machinery

    def stage(self, name: str, config: dict[str, Any], inputs: dict[str, Path],
              work: Callable[[Path, bool, bool], None], *, training: bool = False) -> Path:
        """Run ``work(output, resume, force)`` unless the ledger says it is done."""
        output = self.dir / FILES[name]
        files: tuple[Path, ...] = ()
        state = None
        if training:
            paths = run_paths(output)
            state = paths.state
            files = (paths.metrics, paths.state, *(p for _, p in paths.epoch_files()))
        outcome = self.ledger.run(Stage(name, output, config, inputs, files, state),
                                  lambda out, resume: work(out, resume, not resume))
        self.outcomes.append(outcome)
        return output

    # ------------------------------------------------------------------ stages

    def prepare_data(self) -> None:
        d = self.r.data
        source = data_config(d.name, d.dir, d.options, d.download)
        self.source = source
        if d.subset is None:
            self.data = source
            return
        folder = self.dir / "data"
        check_apart(source, folder)  # before any claim: the source's files are never the runner's
        existing = sorted(p for p in folder.glob("*") if p.is_file()) if folder.is_dir() else []
        self.ledger.claim(*existing)
        write_subset(source, folder, train_size=d.subset.train, test_size=d.subset.test, seed=d.subset.seed)
        self.ledger.record(*sorted(p for p in folder.glob("*") if p.is_file()))
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
        if n2.checkpoint is not None:  # trained elsewhere (e.g. once for several sweep arms)
            src = Path(n2.checkpoint)
            if not src.exists():
                raise MgtoolError(f"recipe net2.checkpoint: {src} does not exist")
            require_small_template_mixing(read_meta(src), src, "net2.checkpoint")
            self.outcomes.append(StageOutcome("net2", src, "given"))
            return src
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
        # Only when given, so the folders of earlier runs keep their fingerprint.
        config.update({k: v for k, v in (("init_scale", f.init_scale), ("init_norm", f.init_norm),
                                         ("init_options", f.init_options)) if v not in (None, {})})
        inputs = {"net1": net1} if net2 is None else {"net1": net1, "net2": net2}

        def work(out: Path, resume: bool, force: bool) -> None:
            result = fuse(sources, out, init=f.init, factor=f.factor, seed=f.seed, noise=f.noise,
                          init_scale=f.init_scale, init_norm=f.init_norm, init_options=f.init_options, force=True)
            if result.warning:
                self.log(f"fuse: warning: {result.warning}")
        return self.stage("fuse", config, inputs, work)

    def recalibrate(self, grown: Path) -> Path | None:
        """BatchNorm statistics of the grown net re-estimated on training images (None: off, or
        the net has no BatchNorm)."""
        rc = self.r.recalibrate
        if rc.samples == 0:
            return None
        meta = read_meta(grown)
        with torch.device("meta"):  # which layers it has, no memory used
            model = build_model(meta)
        if not batchnorm_layers(model):
            self.log(f"recalibrate: {meta.arch.describe()} has no BatchNorm layers; skipped")
            return None
        config = {"samples": rc.samples, "batch_size": rc.batch_size, "data": self.data.to_dict()}
        return self.stage("recalibrate", config, {"grown": grown, **self._data_inputs()},
                          lambda out, resume, force: recalibrate_bn(
                              grown, out, self.data, samples=rc.samples, batch_size=rc.batch_size,
                              device=self.r.runtime.device, force=True))

    def grow_baseline(self, net1: Path) -> Path:
        """Random or Net2Net: net 1 as a plain net, widened by ``fuse.factor``."""
        plain = self.stage("plain1", {}, {"net1": net1}, lambda out, resume, force: export(net1, out, force=True))
        f, method = self.r.fuse, self.r.method
        config = {"method": method, "factor": f.factor, "seed": f.seed}
        return self.stage("grow", config, {"plain1": plain}, lambda out, resume, force: grow(
            plain, out, method=method, factor=f.factor, seed=f.seed, force=True))

    def finetune(self, grown: Path) -> Path:
        ft = self.r.finetune
        epochs, budget = None, None  # None: the section's own (default: a full schedule)
        if ft.flops_norm is not None:  # what the growth has not spent yet of its FLOPs Norm
            target = ft.flops_norm * self.reference_flops() - self.charged(grown, "grown")
            epochs, budget = self._epochs_for(target, load_checkpoint(grown)[0], ft.train)
        train = self._train(ft.train, ft.seed, budget, epochs)
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

    def scratch(self) -> Path:
        """One net from scratch: Large, Small, their Match rows, or a template-mixing one."""
        s, a = self.r.scratch, self.r.arch
        spec = self.small_spec()
        if s.size == "large":
            spec = resolve_spec(grow_spec(spec, self.r.fuse.factor))
        epochs, budget = None, None  # None: the section's own (default: a full schedule)
        if s.flops_norm is not None:
            with torch.device("cpu"):
                model = build_plain(spec) if s.kind == "plain" else fresh_template_mixing(
                    spec, templates=a.templates, share=a.share, seed=s.seed)
            epochs, budget = self._epochs_for(s.flops_norm * self.reference_flops(), model, s.train)
        train = self._train(s.train, s.seed, budget, epochs)
        config = {"arch": spec.to_dict(), "kind": s.kind, "train": train.to_dict(), "data": self.data.to_dict()}
        if s.kind == "template-mixing":
            config.update(templates=a.templates, share=a.share)

        def work(out: Path, resume: bool, force: bool) -> None:
            if s.kind == "plain":
                train_plain(out, spec, self.data, train, self.runtime, resume=resume, force=force)
            else:
                train_small(out, self.data, train, self.runtime, arch=spec.name, width=spec.width,
                            options=dict(spec.options), templates=a.templates, share=a.share, resume=resume,
                            force=force)
        return self.stage("scratch", config, self._data_inputs(), work, training=True)

    def eval_data(self) -> DataConfig:
        """The data the summary's accuracies are measured on: the subset, or the full source."""
        return self.data if self.r.eval.test_set == "subset" else self.source

    def evaluate(self, checkpoints: dict[str, Path]) -> dict[str, Any]:
        e = self.r.eval
        data = self.eval_data()
        config = {"test_set": e.test_set, "limit": e.limit, "data": data.to_dict()}
        out = self.dir / FILES["eval"]
        # The net the fine-tune starts from, also on the fine-tune's per-epoch test images when
        # those differ from eval's: the growth point of the per-epoch curve.
        start = checkpoints.get("grown_bn") or checkpoints.get("grown")
        if start is not None and not self.same_test_images():
            config["growth_start_on"] = self.data.to_dict()
        else:
            start = None

        def one(ckpt: Path, on: Any, limit: int | None) -> dict[str, Any]:
            r = evaluate_checkpoint(ckpt, on, limit=limit, batch_size=e.batch_size, device=self.r.runtime.device,
                                    precision=self.r.runtime.precision, workers=self.r.runtime.workers)
            return {"checkpoint": str(ckpt), **{k: r[k] for k in ("top1", "top5", "loss", "samples")}}

        def work(path: Path, resume: bool, force: bool) -> None:
            results = {}
            for role, ckpt in checkpoints.items():
                results[role] = r = one(ckpt, data, e.limit)
                self.log(f"  eval {role}: top-1 {r['top1']:.2%} on {r['samples']} {data.name} test images")
            if start is not None:
                results["growth_start"] = r = one(start, self.data, None)
                self.log(f"  eval {start.name} on the fine-tune's test images: top-1 {r['top1']:.2%} "
                         f"on {r['samples']}")
            text = json.dumps(results, indent=1)
            atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        self.stage("eval", config, dict(checkpoints), work)
        return json.loads(out.read_text())

    def _data_inputs(self) -> dict[str, Path]:
        """The subset's files are inputs too (a different subset means different data)."""
        folder = self.dir / "data"
        if self.r.data.subset is None:
            return {}
        # Every file of the subset, whatever the data set's layout (idx .gz, CIFAR batches, subset.json).
        return {f"data/{p.name}": p for p in sorted(folder.iterdir()) if p.is_file() and not p.name.startswith(".")}

    def same_test_images(self) -> bool:
        """Whether eval's test images are those the training stages test on after each epoch."""
        e = self.r.eval
        return e.test_set == "subset" and e.limit is None


def _is_mgtool(path: Path) -> bool:
    from mgtool.checkpoint import METADATA_KEY, read_raw_metadata

    try:
        raw = read_raw_metadata(path)
    except MgtoolError:
        return False
    return bool(raw) and METADATA_KEY in raw


def run_pipeline(recipe: Recipe, out_dir: Path | str, *, command: str | None = None, force: bool = False,
                 quiet: bool = False, log: Callable[[str], None] | None = None) -> Summary:
    """Run (or finish) every stage of ``recipe`` in ``out_dir``; write summary.json.

    The whole recipe is checked before the first stage; one process at a time per folder."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    recipe.validate()
    if recipe.runtime.threads:
        torch.set_num_threads(recipe.runtime.threads)
    with Ledger(out_dir, name=STATE_FILE, force=force, log=log) as ledger:
        p = Pipeline(recipe, out_dir, ledger, quiet=quiet, log=log)
        p.preflight()
        ledger.write_text(out_dir / RESOLVED_FILE, recipe.to_yaml(command))
        p.prepare_data()
        checkpoints = _stages(p)
        results = p.evaluate(checkpoints)
        reference = p.reference_flops()
        rows = stage_rows(recipe, checkpoints, results, reference, p.charged)
        last = rows[-1] if recipe.scratch is not None else next(r for r in rows if r["stage"] == "final")
        charged = last["flops_charged"]
        growth = growth_report(recipe, rows, results, reference, run_paths(out_dir / FILES["finetune"]).metrics,
                               final_charged=charged, same_test_images=p.same_test_images(), plot=out_dir / PLOT_FILE,
                               ledger=ledger, log=p.log)
        summary = Summary(recipe.name, out_dir, rows, p.outcomes, reference, time.perf_counter() - t0,
                          extra={"flops_charged": charged, "flops_norm": flops_norm(charged, reference),
                                 "reference_epochs": recipe.reference.epochs,
                                 "data": p.data.to_dict(), "eval_test_set": recipe.eval.test_set,
                                 "eval_data": p.eval_data().to_dict(), **growth})
        summary.path = ledger.write_text(out_dir / SUMMARY_FILE, json.dumps(summary.to_dict(), indent=1))
    return summary


def _stages(p: Pipeline) -> dict[str, Path]:
    """Run the recipe's stage graph; the checkpoints to evaluate, by role."""
    recipe = p.r
    if recipe.scratch is not None:
        return {"scratch": p.scratch()}
    net1 = p.net1()
    p.net1_flops = read_meta(net1).flops.training
    net2 = None
    if recipe.method == "mixturegrowth":
        net2 = p.net2(net1) if recipe.fuse.fusion else None
        grown = p.fuse(net1, net2)
    else:
        grown = p.grow_baseline(net1)
    recalibrated = p.recalibrate(grown)
    tuned = p.finetune(recalibrated or grown)
    final = p.export(tuned) if recipe.method == "mixturegrowth" else tuned
    charged = p.charged(final, "final")
    match = p.match(charged, tuned) if recipe.reference.train_match else None
    checkpoints = {"net1": net1}
    if net2 is not None:
        checkpoints["net2"] = net2
    checkpoints["grown"] = grown
    if recalibrated is not None:
        checkpoints["grown_bn"] = recalibrated
    checkpoints["final"] = final
    if match is not None:
        checkpoints["match"] = match
    return checkpoints
