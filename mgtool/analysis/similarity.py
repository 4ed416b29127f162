"""What ``mgtool cka`` and ``mgtool cka-time`` compute: CKA matrices between checkpoints.

``cka_between``: every selected layer of A against every selected layer of B (the
paper's Fig. 5). ``cka_over_time``: one layer in every pair of a run's epoch checkpoints
(the paper's Fig. 4). Both feed the same evaluation batches to every model (one loop,
``_forward``) and hand what the hooks keep to an ``Estimator``; both return a typed
result (``mgtool.analysis.results``) that writes its JSON and draws its heatmap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor, nn

from mgtool.analysis.activations import (
    ChannelBlock,
    LayerTap,
    growth_factor,
    resolve_layer,
    select_layers,
)
from mgtool.analysis.checkpoints import EpochCheckpoint, epoch_checkpoints
from mgtool.analysis.cka import MIN_BATCH
from mgtool.analysis.estimators import ESTIMATORS, Estimator, make_estimator
from mgtool.analysis.plot import FORMATS
from mgtool.analysis.results import CkaSide, Estimate, LayerCka, TimeCka
from mgtool.checkpoint import CheckpointMeta, check_output_path, read_meta
from mgtool.errors import MgtoolError, SettingError, check_choice, first_line
from mgtool.loading import build_model, load_checkpoint

if TYPE_CHECKING:
    from mgtool.data import DataConfig

__all__ = ["EvalSettings", "cka_between", "cka_over_time", "epoch_checkpoints", "output_paths"]


@dataclass(frozen=True)
class EvalSettings:
    """Which samples every model sees, and how CKA is estimated from them."""

    split: str = "test"
    samples: int = 2048
    batch_size: int = 256
    estimator: str = "minibatch"
    device: str = "cpu"

    def check(self) -> None:
        check_choice("estimator", self.estimator, ESTIMATORS)
        if self.samples < MIN_BATCH:
            raise SettingError("samples", f"must be at least {MIN_BATCH}, got {self.samples}")
        if self.batch_size < MIN_BATCH:
            raise SettingError(
                "batch_size",
                f"must be at least {MIN_BATCH} for the unbiased HSIC estimator, got {self.batch_size}",
            )


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
) -> LayerCka:
    """The layer-by-layer CKA matrix of checkpoint A (rows) against checkpoint B (columns).

    ``half`` (first|second|both, or a block number) takes, in each grown checkpoint
    (g > 1), the channel block that came from small net 1, 2, ...
    """
    settings.check()
    a, b = Path(a), Path(b)
    model_a, meta_a = _load(a, data)
    model_b, meta_b = _load(b, data)
    layers_a = select_layers(model_a, meta_a.arch.name, layers, str(a))
    layers_b = select_layers(model_b, meta_b.arch.name, layers, str(b))
    block_a, block_b = _blocks(half, model_a, model_b, a, b)
    estimator = make_estimator(settings.estimator, settings.samples)
    taps = [
        (LayerTap(model_a.to(settings.device), layers_a, estimator.keep, block_a), str(a)),
        (LayerTap(model_b.to(settings.device), layers_b, estimator.keep, block_b), str(b)),
    ]
    count = _Count()
    try:
        for rows, cols in _forward(taps, data, settings, count, progress):
            if count.batches == 0:
                estimator.check_memory([*rows, *cols])
            estimator.update(rows, cols)
    finally:
        for tap, _ in taps:
            tap.close()
    return LayerCka(
        settings.estimator,
        _estimate(estimator, count, data, settings),
        data,
        settings.split,
        settings.batch_size,
        rows=_side(a, meta_a, layers_a, half if block_a else "both"),
        cols=_side(b, meta_b, layers_b, half if block_b else "both"),
    )


def cka_over_time(
    checkpoints: list[EpochCheckpoint],
    layer: str,
    data: DataConfig,
    settings: EvalSettings,
    *,
    progress: Callable[[int], None] | None = None,
) -> TimeCka:
    """CKA of one layer between every pair of checkpoints (see ``epoch_checkpoints``).

    The checkpoints are loaded one at a time: each runs over the batches once and leaves
    only what the estimator keeps (per-batch Gram matrices, or the activations)."""
    settings.check()
    if len(checkpoints) < 2:
        raise MgtoolError(
            "cka-time needs at least two checkpoints (a run folder written with --keep-every, or several files)"
        )
    name = _layer_in_every_checkpoint(checkpoints, layer, data)
    estimator = make_estimator(settings.estimator, settings.samples)
    per_model: list[list[Tensor]] = []
    count = _Count()
    for ckpt in checkpoints:
        model, _ = _load(ckpt.path, data)
        with LayerTap(model.to(settings.device), [name], estimator.keep) as tap:
            kept = []
            for (out,) in _forward([(tap, str(ckpt.path))], data, settings, count):
                if not per_model and count.batches == 0:
                    estimator.check_memory(out, copies=len(checkpoints))
                kept.append(out[0])
        del model
        per_model.append(kept)
        if progress:
            progress(1)
    for batch in zip(*per_model, strict=True):
        estimator.update(batch)
    return TimeCka(
        settings.estimator,
        _estimate(estimator, count, data, settings),
        data,
        settings.split,
        settings.batch_size,
        layer=name,
        checkpoints=list(checkpoints),
    )


# ---------------------------------------------------------------- the loop


@dataclass
class _Count:
    samples: int = 0
    batches: int = 0


def _forward(
    taps: list[tuple[LayerTap, str]],
    data: DataConfig,
    settings: EvalSettings,
    count: _Count,
    progress: Callable[[int], None] | None = None,
) -> Iterator[list[list[Tensor]]]:
    """Per evaluation batch, what every tap keeps of its layers; ``count`` counts the batches
    consumed (it starts again at zero on every pass)."""
    from mgtool.data import eval_batches

    count.samples = count.batches = 0
    batches = eval_batches(
        data, split=settings.split, limit=settings.samples, batch_size=settings.batch_size, device=settings.device
    )
    for x, _ in batches:
        if x.shape[0] < MIN_BATCH:  # the unbiased HSIC of a batch needs at least 4 samples
            continue
        yield [_run(tap, x, where) for tap, where in taps]
        count.samples += x.shape[0]
        count.batches += 1
        if progress:
            progress(x.shape[0])


def _estimate(estimator: Estimator, count: _Count, data: DataConfig, settings: EvalSettings) -> Estimate:
    if count.batches == 0:
        raise MgtoolError(
            f"{data.name} ({settings.split}) gave no batch of at least "
            f"{MIN_BATCH} samples; check --samples and --batch-size"
        )
    return Estimate(estimator.compute(), count.samples, count.batches)


def _run(tap: LayerTap, x: Tensor, where: str) -> list[Tensor]:
    try:
        return tap.run(x)
    except RuntimeError as e:
        raise MgtoolError(
            f"{where}: the model cannot run on input of shape {tuple(x.shape[1:])} "
            f"({first_line(e)}); does the data set match the architecture?"
        ) from None


# ---------------------------------------------------------------- checks and inputs


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


def _side(path: Path, meta: CheckpointMeta, layers: list[str], half: str) -> CkaSide:
    return CkaSide(path, meta.arch.to_dict(), layers, half)


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
