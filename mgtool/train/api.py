"""The library functions behind ``train-small``, ``finetune`` and ``eval``."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from mgtool.archs import ArchSpec, resolve_spec
from mgtool.checkpoint import CheckpointMeta, Flops, check_output_path, read_meta, save_checkpoint
from mgtool.data import DataConfig, data_source, dataset_info, resolve_config
from mgtool.data.registry import check_split
from mgtool.errors import MgtoolError, check_range
from mgtool.loading import load_checkpoint
from mgtool.model import TemplateMixingNet
from mgtool.provenance import Parent, sha256_file
from mgtool.safe_write import check_not_an_input
from mgtool.templates import fresh_template_mixing
from mgtool.train.distributed import resolve_device
from mgtool.train.evaluate import check_model_fits, evaluate, resolve_precision
from mgtool.train.lineage import Lineage
from mgtool.train.settings import TrainConfig, TrainSettings, resolve
from mgtool.train.trainer import FitResult, Runtime, fit


def dataset_preset(name: str) -> str:
    """The training preset a data set's registry entry names (``standard`` unless it says otherwise)."""
    from mgtool.data import get_dataset

    return getattr(get_dataset(name), "train_preset", "standard")


def train_config(dataset: str, settings: TrainSettings | None = None, *, seed: int = 0,
                 **values: Any) -> TrainConfig:
    """The resolved recipe for ``dataset``: ``settings`` (and/or keyword values) over its defaults."""
    settings = (settings or TrainSettings()).merged(TrainSettings(**values))
    return resolve(settings, preset=dataset_preset(dataset), seed=seed)


def stored_data(path: Path | str) -> dict[str, Any] | None:
    """The data section of a checkpoint's metadata (what ``--like`` copies), or None."""
    return read_meta(path).data


def stored_seed(meta: CheckpointMeta, path: Path | str) -> int | None:
    recipe = (meta.training or {}).get("recipe")
    if not isinstance(recipe, dict) or "seed" not in recipe:
        return None
    seed = recipe["seed"]
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
        raise MgtoolError(f"{path}: training.recipe.seed is {str(seed)[:40]!r}, not a seed (an integer in [0, 2**63)); "
                          "pass --seed")
    return seed


def require_small_template_mixing(meta: CheckpointMeta, path: Path | str, option: str) -> None:
    """Net 1 for ``--like`` / ``--init-from``: template-mixing, 1x1 grids, one set per bank."""
    if meta.kind != "template-mixing" or meta.plan is None:
        raise MgtoolError(f"{path}: a {meta.kind} checkpoint; {option} needs a small template-mixing "
                          "checkpoint (from train-small or convert)")
    grown = [la.name for la in meta.plan.layers if la.rows != 1 or la.cols != 1]
    if grown or any(b.sets != 1 for b in meta.plan.banks):
        raise MgtoolError(f"{path}: a grown template-mixing checkpoint (tile grids, e.g. layer "
                          f"{(grown or ['?'])[0]}); {option} needs a small one; train grown nets "
                          "with `mgtool finetune`")


def like_seed(like: Path | str, seed: int | None) -> int:
    """The seed of the second net: --seed, else net 1's seed + 1; never net 1's own seed."""
    first = stored_seed(read_meta(like), like)
    if seed is None:
        return first + 1 if first is not None else 1
    if first is not None and seed == first:
        raise MgtoolError(f"--seed {seed} is the seed of {like}, which would give the same templates; "
                          "the second network must be seeded independently (omit --seed to use "
                          f"{first + 1})")
    return seed


def train_small(out: Path | str, data: DataConfig, train: TrainConfig, runtime: Runtime, *,
                arch: str | None = None, width: float | None = None,
                options: dict[str, Any] | None = None, num_classes: int | None = None,
                in_chans: int | None = None, templates: int = 2, share: str = "pairs",
                like: Path | str | None = None, init_from: Path | str | None = None,
                resume: bool = False, force: bool = False) -> FitResult:
    """Train a fresh small template-mixing net (``arch``/``width``, or ``like`` net 1's
    architecture and plan), or continue one (``init_from``)."""
    if sum(x is not None for x in (arch, like, init_from)) != 1:
        raise MgtoolError("give exactly one of --arch (with --width), --like CKPT or --init-from CKPT")
    check_not_an_input(out, [like, init_from])
    for name, count in (("num_classes", num_classes), ("in_chans", in_chans)):
        if count is not None:
            check_range(name, count, low=1)  # 0 is not "the data set's": omit the option for that
    data = resolve_config(data)
    info = dataset_info(data)
    if init_from is not None:
        model, meta = load_checkpoint(init_from)
        require_small_template_mixing(meta, init_from, "--init-from")
        parent = Parent(str(init_from), sha256_file(init_from), "input", meta.flops.training)
        lineage = Lineage("train-small", meta.kind, meta.arch, meta.plan, (parent,), meta.flops,
                          {"init_from": str(init_from)})
        return fit(model, lineage, data, train, runtime, out, resume=resume, force=force)
    if like is not None:
        meta = read_meta(like)
        require_small_template_mixing(meta, like, "--like")
        assert meta.plan is not None
        spec = meta.arch
        templates, share = meta.plan.templates_per_layer, meta.plan.share
        extra: dict[str, Any] = {"like": {"path": str(like), "sha256": sha256_file(like)}}
    else:
        if width is None:
            raise MgtoolError("--arch needs --width")
        spec = ArchSpec(arch, width, num_classes or info.num_classes,  # type: ignore[arg-type]
                        in_chans or info.shape[0], dict(options or {}))
        extra = {}
    spec = resolve_spec(spec)
    model = fresh_template_mixing(spec, templates=templates, share=share, seed=train.seed)
    if like is not None and model.plan != meta.plan:
        raise MgtoolError(f"{like}: its template plan differs from the one mgtool makes for "
                          f"{spec.describe()} (t={templates}, share={share}); it cannot be matched")
    lineage = Lineage("train-small", "template-mixing", spec, model.plan, (), Flops(), extra)
    if train.epochs == 0:
        return save_untrained(model, lineage, data, train, runtime, out, force=force)
    return fit(model, lineage, data, train, runtime, out, resume=resume, force=force)


def save_untrained(model: TemplateMixingNet, lineage: Lineage, data: DataConfig, train: TrainConfig,
                   runtime: Runtime, out: Path | str, *, force: bool = False) -> FitResult:
    """``train-small --epochs 0``: the fresh net, evaluated and written; no step, no FLOPs.

    Fusing net 1 with this is the paper's "second network trained for 0 FLOPs".
    """
    started = time.perf_counter()
    out = check_output_path(out, force)
    info = dataset_info(data)
    check_model_fits(model, lineage.arch.describe(), data, info.shape, info.num_classes)
    result = evaluate(model, data, batch_size=runtime.eval_batch_size, device=resolve_device(runtime.device))
    metrics = {"test_loss": result.loss, "test_top1": result.top1, "test_top5": result.top5}
    summary = {"epochs": 0, "epochs_done": 0, "complete": True, "steps": 0, "samples_seen": 0,
               "flops_spent": 0.0, "recipe": train.to_dict(), **metrics}
    meta = lineage.checkpoint_meta(data, summary, 0.0)
    save_checkpoint(out, model.state_dict(), meta, force=force)
    history = [{"epoch": 0, **metrics, "samples_seen": 0, "training_flops": lineage.inherited.training}]
    return FitResult(out, meta, history, time.perf_counter() - started)


def finetune(src: Path | str, out: Path | str, data: DataConfig, train: TrainConfig, runtime: Runtime,
             *, resume: bool = False, force: bool = False) -> FitResult:
    """Train any mgtool checkpoint (templates and coefficients both train, or plain weights)."""
    src, out = Path(src), Path(out)
    check_not_an_input(out, [src])
    model, meta = load_checkpoint(src)
    parent = Parent(str(src), sha256_file(src), "input", meta.flops.training)
    lineage = Lineage("finetune", meta.kind, meta.arch, meta.plan, (parent,), meta.flops,
                      {"source": str(src)})
    return fit(model, lineage, resolve_config(data), train, runtime, out, resume=resume, force=force)


def evaluate_checkpoint(src: Path | str, data: DataConfig, *, split: str = "test",
                        limit: int | None = None, batch_size: int = 256, device: str = "auto",
                        precision: str = "auto", workers: int | None = None) -> dict[str, Any]:
    """Top-1, top-5 and mean cross-entropy of a checkpoint on a split."""
    check_split(data.name, split)  # usage errors first, before any file is read
    if limit is not None:
        check_range("limit", limit, low=1)
    model, meta = load_checkpoint(src)
    data = resolve_config(data)
    info = dataset_info(data)
    check_model_fits(model, meta.arch.describe(), data, info.shape, info.num_classes)
    dev = resolve_device(device)
    bf16 = resolve_precision(precision, dev)
    model.to(dev)
    result = evaluate(model, data, split=split, limit=limit, batch_size=batch_size, device=dev,
                      bf16=bf16, channels_last=dev.type == "cuda", workers=workers, finite=True)
    return {"checkpoint": str(src), "kind": meta.kind, "arch": meta.arch.to_dict(),
            "data": data.to_dict(), "split": "test" if split == "val" else split,
            "precision": "bf16" if bf16 else "fp32", **result.to_dict(),
            **data_source(data, split, limit).to_dict()}
