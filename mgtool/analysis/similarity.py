"""What ``mgtool cka`` and ``mgtool cka-time`` compute: CKA matrices between checkpoints.

``cka_between``: every selected layer of A against every selected layer of B (the
paper's Fig. 5). ``cka_over_time``: one layer in every pair of a run's epoch checkpoints
(the paper's Fig. 4). Both feed the same evaluation batches to every model and return a
JSON-ready dict; ``write_report`` writes it next to the heatmap.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from mgtool.analysis.activations import (
    ChannelBlock,
    LayerTap,
    growth_factor,
    resolve_layer,
    select_layers,
)
from mgtool.analysis.cka import MIN_BATCH, MinibatchCKA, gram, linear_cka
from mgtool.analysis.plot import FORMATS, matplotlib_available, plot_heatmap
from mgtool.checkpoint import CheckpointMeta, atomic_write, check_output_path, read_meta
from mgtool.errors import MgtoolError, first_line
from mgtool.loading import build_model, load_checkpoint
from mgtool.train.paths import EPOCH_FILE

if TYPE_CHECKING:
    from mgtool.data import DataConfig

ESTIMATORS = {
    "minibatch": "linear CKA, unbiased HSIC (Song et al. 2012) per batch, averaged over batches "
    "(Nguyen, Raghu & Kornblith 2021)",
    "full": "linear CKA, biased HSIC on all samples at once (Kornblith et al. 2019)",
}
FULL_MEMORY_LIMIT = 4 * 2**30  # bytes of stored activations the full estimator may hold


@dataclass(frozen=True)
class EvalSettings:
    """Which samples every model sees, and how CKA is estimated from them."""

    split: str = "test"
    samples: int = 2048
    batch_size: int = 256
    estimator: str = "minibatch"
    device: str = "cpu"

    def check(self) -> None:
        if self.estimator not in ESTIMATORS:
            raise MgtoolError(f"--estimator must be one of {', '.join(ESTIMATORS)}, got {self.estimator!r}")
        if self.samples < MIN_BATCH:
            raise MgtoolError(f"--samples must be at least {MIN_BATCH}, got {self.samples}")
        if self.batch_size < MIN_BATCH:
            raise MgtoolError(
                f"--batch-size must be at least {MIN_BATCH} for the unbiased HSIC estimator, got {self.batch_size}"
            )


@dataclass(frozen=True)
class EpochCheckpoint:
    path: Path
    run: str
    epoch: int | None


def output_paths(out: Path, force: bool) -> tuple[Path, Path]:
    """The figure path and the JSON beside it, both checked before any work is done."""
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise MgtoolError(
            f"{out}: the figure must end in {', '.join(FORMATS)} "
            f"(the JSON is written beside it as {out.with_suffix('.json').name})"
        )
    return check_output_path(out, force), check_output_path(out.with_suffix(".json"), force)


def cka_between(
    a: Path,
    b: Path,
    data: DataConfig,
    settings: EvalSettings,
    *,
    layers: str | None = None,
    half: str = "both",
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """The layer-by-layer CKA matrix of checkpoint A (rows) against checkpoint B (columns).

    ``half`` (first|second|both, or a block number) takes, in each grown checkpoint
    (g > 1), the channel block that came from small net 1, 2, ...
    """
    settings.check()
    model_a, meta_a = _load(a, data)
    model_b, meta_b = _load(b, data)
    layers_a = select_layers(model_a, meta_a.arch.name, layers, str(a))
    layers_b = select_layers(model_b, meta_b.arch.name, layers, str(b))
    block_a, block_b = _blocks(half, model_a, model_b, a, b)
    matrix, seen, batches = _estimate_pair(
        ((model_a, layers_a, block_a, str(a)), (model_b, layers_b, block_b, str(b))),
        data,
        settings,
        progress,
    )
    return {
        "kind": "cka",
        "estimator": settings.estimator,
        "estimator_detail": ESTIMATORS[settings.estimator],
        "matrix": _jsonable(matrix),
        "rows": _side(a, meta_a, layers_a, half if block_a else "both"),
        "cols": _side(b, meta_b, layers_b, half if block_b else "both"),
        "data": data.to_dict(),
        "split": settings.split,
        "samples": seen,
        "batches": batches,
        "batch_size": settings.batch_size,
    }


def cka_over_time(
    checkpoints: list[EpochCheckpoint],
    layer: str,
    data: DataConfig,
    settings: EvalSettings,
    *,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """CKA of one layer between every pair of checkpoints (see ``epoch_checkpoints``)."""
    settings.check()
    if len(checkpoints) < 2:
        raise MgtoolError(
            "cka-time needs at least two checkpoints (a run folder written with --keep-every, or several files)"
        )
    name = _layer_in_every_checkpoint(checkpoints, layer, data)
    matrix, seen, batches = _estimate_time(checkpoints, name, data, settings, progress)
    runs = {c.run for c in checkpoints}
    return {
        "kind": "cka-time",
        "estimator": settings.estimator,
        "estimator_detail": ESTIMATORS[settings.estimator],
        "matrix": _jsonable(matrix),
        "layer": name,
        "checkpoints": [
            {"path": str(c.path), "run": c.run, "epoch": c.epoch, "label": _label(c, len(runs) > 1)}
            for c in checkpoints
        ],
        "data": data.to_dict(),
        "split": settings.split,
        "samples": seen,
        "batches": batches,
        "batch_size": settings.batch_size,
    }


def epoch_checkpoints(inputs: Iterable[Path]) -> list[EpochCheckpoint]:
    """Files as given; a folder stands for its ``<run>.epochNNN.safetensors`` files, by epoch."""
    found: list[EpochCheckpoint] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found.extend(_run_folder(item))
        elif item.exists():
            match = EPOCH_FILE.match(item.name)
            run = match["run"] if match else item.name.removesuffix(".safetensors")
            found.append(EpochCheckpoint(item, run, int(match["epoch"]) if match else None))
        else:
            raise MgtoolError(f"{item}: no such file or folder")
    return found


def _run_folder(folder: Path) -> list[EpochCheckpoint]:
    files = []
    for path in folder.iterdir():
        match = EPOCH_FILE.match(path.name)
        if match and path.is_file():
            files.append(EpochCheckpoint(path, match["run"], int(match["epoch"])))
    runs = sorted({f.run for f in files})
    if not files:
        raise MgtoolError(
            f"{folder}: no per-epoch checkpoints (<run>.epochNNN.safetensors); "
            "train with --keep-every 1, or pass checkpoint files"
        )
    if len(runs) > 1:
        raise MgtoolError(
            f"{folder}: holds epoch checkpoints of several runs ({', '.join(runs)}); "
            f"pass the files instead, e.g. {folder / (runs[0] + '.epoch*.safetensors')}"
        )
    return sorted(files, key=lambda f: f.epoch or 0)


def write_report(payload: dict[str, Any], figure: Path, json_path: Path, *, title: str) -> Path | None:
    """Write the JSON (always) and the heatmap (if matplotlib is installed); return the figure."""
    payload["json"] = str(json_path)
    drawn = matplotlib_available()
    payload["figure"] = str(figure) if drawn else None
    if drawn:  # first: if drawing fails, nothing is written
        _draw(payload, figure, title)
    text = json.dumps(payload, indent=1) + "\n"
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(text))
    return figure if drawn else None


def _draw(payload: dict[str, Any], figure: Path, title: str) -> None:
    if payload["kind"] == "cka":
        rows, cols = payload["rows"], payload["cols"]
        plot_heatmap(
            payload["matrix"],
            rows["layers"],
            cols["layers"],
            title=title,
            row_axis=_axis_name(rows),
            col_axis=_axis_name(cols),
            out=figure,
        )
    else:
        labels = [c["label"] for c in payload["checkpoints"]]
        plot_heatmap(
            payload["matrix"],
            labels,
            labels,
            title=title,
            row_axis="checkpoint (epoch)",
            col_axis="checkpoint (epoch)",
            out=figure,
        )


def _axis_name(side: dict[str, Any]) -> str:
    arch = side["arch"]
    half = "" if side["half"] == "both" else f", {side['half']} half of channels"
    depth = f" depth {arch['options']['depth']}" if "depth" in arch["options"] else ""
    return f"{Path(side['checkpoint']).name}\n{arch['name']}{depth} width {arch['width']:g}{half}"


def _label(c: EpochCheckpoint, several_runs: bool) -> str:
    if c.epoch is None:
        return c.run
    return f"{c.run}:{c.epoch}" if several_runs else str(c.epoch)


def _load(path: Path, data: DataConfig) -> tuple[nn.Module, CheckpointMeta]:
    _check_channels(path, read_meta(path), data)
    model, meta = load_checkpoint(path)
    return model.eval(), meta


def _check_channels(path: Path, meta: CheckpointMeta, data: DataConfig) -> None:
    from mgtool.data import dataset_info

    channels = dataset_info(data).shape[0]
    if meta.arch.in_chans != channels:
        raise MgtoolError(
            f"{path}: the model takes {meta.arch.in_chans}-channel input, but "
            f"{data.name} images have {channels} channels"
        )


def _blocks(
    half: str, model_a: nn.Module, model_b: nn.Module, a: Path, b: Path
) -> tuple[ChannelBlock | None, ChannelBlock | None]:
    ga, gb = growth_factor(model_a), growth_factor(model_b)
    block_a = ChannelBlock.from_half(half, ga) if ga > 1 else None
    block_b = ChannelBlock.from_half(half, gb) if gb > 1 else None
    if half != "both" and block_a is None and block_b is None:
        raise MgtoolError(
            f"--half {half}: neither {a.name} nor {b.name} is a grown network "
            "(a template-mixing checkpoint made by fuse); drop --half"
        )
    return block_a, block_b


def _side(path: Path, meta: CheckpointMeta, layers: list[str], half: str) -> dict[str, Any]:
    return {"checkpoint": str(path), "arch": meta.arch.to_dict(), "layers": layers, "half": half}


Tap = tuple[nn.Module, list[str], ChannelBlock | None, str]


def _batches(data: DataConfig, settings: EvalSettings) -> Iterator[Tensor]:
    from mgtool.data import eval_batches

    for x, _ in eval_batches(
        data,
        split=settings.split,
        limit=settings.samples,
        batch_size=settings.batch_size,
        device=settings.device,
    ):
        if x.shape[0] >= MIN_BATCH:  # the unbiased HSIC of a batch needs at least 4 samples
            yield x


def _run(tap: LayerTap, x: Tensor, where: str) -> list[Tensor]:
    try:
        return tap.run(x)
    except RuntimeError as e:
        raise MgtoolError(
            f"{where}: the model cannot run on input of shape {tuple(x.shape[1:])} "
            f"({first_line(e)}); does the data set match the architecture?"
        ) from None


def _estimate_pair(
    taps: tuple[Tap, Tap],
    data: DataConfig,
    settings: EvalSettings,
    progress: Callable[[int], None] | None,
) -> tuple[Tensor, int, int]:
    """The CKA matrix of two models' layers, both models on the same batches."""
    full = settings.estimator == "full"
    hooks = [
        LayerTap(model.to(settings.device), layers, _keep if full else gram, block) for model, layers, block, _ in taps
    ]
    stored: list[list[list[Tensor]]] = [[[] for _ in t[1]] for t in taps]
    acc = MinibatchCKA()
    seen = batches = 0
    try:
        for x in _batches(data, settings):
            outs = [_run(h, x, t[3]) for h, t in zip(hooks, taps, strict=True)]
            if full:
                _check_full_memory(sum(t.shape[1] for out in outs for t in out), settings.samples)
                for store, out in zip(stored, outs, strict=True):
                    for layer_store, act in zip(store, out, strict=True):
                        layer_store.append(act)
            else:
                acc.update(torch.stack(outs[0]), torch.stack(outs[1]))
            seen += x.shape[0]
            batches += 1
            if progress:
                progress(x.shape[0])
    finally:
        for h in hooks:
            h.close()
    _check_some(batches, data, settings)
    if not full:
        return acc.compute().cpu(), seen, batches
    xs = [torch.cat(s) for s in stored[0]]
    ys = [torch.cat(s) for s in stored[1]]
    return _full_matrix(xs, ys), seen, batches


def _layer_in_every_checkpoint(checkpoints: list[EpochCheckpoint], layer: str, data: DataConfig) -> str:
    """The layer's exact name, checked in every architecture among the checkpoints before any
    weights are loaded (a model is built once per architecture, from the metadata alone)."""
    names: dict[str, str] = {}
    for ckpt in checkpoints:
        meta = read_meta(ckpt.path)
        key = meta.arch.key()
        if key not in names:
            _check_channels(ckpt.path, meta, data)
            names[key] = resolve_layer(build_model(meta), meta.arch.name, layer, str(ckpt.path))
    if len(set(names.values())) > 1:
        raise MgtoolError(
            f"--layer {layer!r} names different layers in different checkpoints "
            f"({', '.join(sorted(set(names.values())))}); give the exact name"
        )
    return next(iter(names.values()))


def _estimate_time(
    checkpoints: list[EpochCheckpoint],
    layer: str,
    data: DataConfig,
    settings: EvalSettings,
    progress: Callable[[int], None] | None,
) -> tuple[Tensor, int, int]:
    """One layer in many checkpoints, loaded one at a time: each runs over the batches once and
    leaves only its per-batch Gram matrices (or, for the full estimator, its activations)."""
    full = settings.estimator == "full"
    per_model: list[list[Tensor]] = []
    seen = batches = 0
    for ckpt in checkpoints:
        model, _ = _load(ckpt.path, data)
        kept = []
        seen = batches = 0
        with LayerTap(model.to(settings.device), [layer], _keep if full else gram) as tap:
            for x in _batches(data, settings):
                out = _run(tap, x, str(ckpt.path))[0]
                if full:
                    _check_full_memory(out.shape[1] * len(checkpoints), settings.samples)
                kept.append(out)
                seen += x.shape[0]
                batches += 1
        del model
        per_model.append(kept)
        if progress:
            progress(1)
    _check_some(batches, data, settings)
    if full:
        feats = [torch.cat(k) for k in per_model]
        return _full_matrix(feats, feats), seen, batches
    acc = MinibatchCKA()
    for b in range(batches):
        grams = torch.stack([kept[b] for kept in per_model])
        acc.update(grams, grams)
    return acc.compute().cpu(), seen, batches


def _keep(activation: Tensor) -> Tensor:
    """The full estimator keeps every activation (a copy: later in-place ops must not touch it)."""
    return activation.reshape(activation.shape[0], -1).to("cpu", torch.float32, copy=True)


def _full_matrix(xs: list[Tensor], ys: list[Tensor]) -> Tensor:
    return torch.tensor([[linear_cka(x, y) for y in ys] for x in xs], dtype=torch.float64)


def _check_full_memory(features_per_sample: int, samples: int) -> None:
    needed = features_per_sample * 4 * samples
    if needed > FULL_MEMORY_LIMIT:
        raise MgtoolError(
            f"--estimator full would keep {needed / 2**30:.1f} GiB of activations for {samples} "
            "samples; use --estimator minibatch (memory bounded) or fewer --samples"
        )


def _check_some(batches: int, data: DataConfig, settings: EvalSettings) -> None:
    if batches == 0:
        raise MgtoolError(
            f"{data.name} ({settings.split}) gave no batch of at least "
            f"{MIN_BATCH} samples; check --samples and --batch-size"
        )


def _jsonable(matrix: Tensor) -> list[list[float | None]]:
    return [[None if math.isnan(v) else round(v, 6) for v in row] for row in matrix.tolist()]
