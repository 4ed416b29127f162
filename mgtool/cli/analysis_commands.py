"""``cka`` and ``cka-time``: what growth did to a network's features (paper Sec. 4.4)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mgtool.cli.common import console, emit, handle_errors
from mgtool.cli.data_options import DataDirOpt, DataOpt, DataOptOpt, DeviceOpt, SplitOpt
from mgtool.errors import MgtoolError

if TYPE_CHECKING:
    from mgtool.analysis.results import CkaResult

FigureOpt = Annotated[
    Path,
    typer.Option(
        "-o",
        "--output",
        help="Heatmap (.png, .pdf or .svg); the JSON is written beside it (OUT.json).",
        show_default=False,
    ),
]
SamplesOpt = Annotated[int, typer.Option("--samples", help="Evaluation samples (the first N of the split).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Batch size; each batch gives one unbiased HSIC estimate.")]
EstimatorOpt = Annotated[
    str,
    typer.Option(
        "--estimator",
        help="minibatch: unbiased HSIC per batch, memory bounded (Nguyen et al. 2021); "
        "full: biased HSIC on all samples at once, keeps every activation.",
    ),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite existing OUT and OUT.json.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object on stdout.")]


@handle_errors
def cka_cmd(
    a: Annotated[Path, typer.Argument(help="Checkpoint for the rows (e.g. the grown network).", show_default=False)],
    b: Annotated[Path, typer.Argument(help="Checkpoint for the columns (may differ in width).", show_default=False)],
    output: FigureOpt,
    data: DataOpt = None,
    data_dir: DataDirOpt = None,
    data_opt: DataOptOpt = None,
    split: SplitOpt = "test",
    samples: SamplesOpt = 2048,
    batch_size: BatchOpt = 256,
    layers: Annotated[
        str | None,
        typer.Option(
            "--layers",
            help="Comma-separated globs over module names (`*` within a dotted part, `**` across), "
            "e.g. `stages.*.*`. Default: every block's output (see README).",
            show_default=False,
        ),
    ] = None,
    half: Annotated[
        str,
        typer.Option(
            "--half",
            help="In a grown checkpoint: first (channels from net 1), second (from net 2), both; N: block N of g.",
        ),
    ] = "both",
    estimator: EstimatorOpt = "minibatch",
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Layer-by-layer linear CKA between two checkpoints, as a heatmap (paper Fig. 5).

    Every model sees the same evaluation images in eval mode; activations are taken
    with forward hooks. --data may be omitted when A records its data set.

    Example: mgtool cka grown.safetensors net1.safetensors --data cifar100 --half first -o cka.png
    """
    from mgtool.analysis.activations import check_half
    from mgtool.analysis.similarity import EvalSettings, cka_between, output_paths
    from mgtool.checkpoint import read_meta
    from mgtool.cli.data_options import data_config_from_cli
    from mgtool.train.distributed import resolve_device

    try:
        check_half(half)
    except MgtoolError as e:
        raise typer.BadParameter(str(e), param_hint="--half") from None
    figure, json_path = output_paths(output, force)
    cfg = data_config_from_cli(data, data_dir, data_opt, fallback=read_meta(a).data)
    settings = EvalSettings(split, samples, batch_size, estimator, str(resolve_device(device)))
    from rich.progress import Progress

    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("cka: running both models", total=samples)
        result = cka_between(a, b, cfg, settings, layers=layers, half=half, progress=lambda n: bar.advance(task, n))
    _finish(result, figure, json_path, json_, force)


@handle_errors
def cka_time_cmd(
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Run folders (their `RUN.epochNNN.safetensors` files, by epoch) and/or checkpoints, "
            "in the order to show them.",
            show_default=False,
        ),
    ],
    layer: Annotated[
        str, typer.Option("--layer", help="Module name of the layer, e.g. stages.2.1.", show_default=False)
    ],
    output: FigureOpt,
    data: DataOpt = None,
    data_dir: DataDirOpt = None,
    data_opt: DataOptOpt = None,
    split: SplitOpt = "test",
    samples: SamplesOpt = 1024,
    batch_size: BatchOpt = 256,
    estimator: EstimatorOpt = "minibatch",
    device: DeviceOpt = "auto",
    force: ForceOpt = False,
    json_: JsonOpt = False,
) -> None:
    """CKA of one layer between every pair of epoch checkpoints (paper Fig. 4).

    A growth point shows as a change of phase. Train with --keep-every 1 to keep the
    epoch checkpoints; pass the small net's and the grown net's runs to see both.

    Example: mgtool cka-time runs/net2.epoch0*.safetensors runs/grown/ --layer stages.2.1 --data cifar100 -o time.png
    """
    from mgtool.analysis.similarity import EvalSettings, cka_over_time, epoch_checkpoints, output_paths
    from mgtool.checkpoint import read_meta
    from mgtool.cli.data_options import data_config_from_cli
    from mgtool.train.distributed import resolve_device

    figure, json_path = output_paths(output, force)
    checkpoints = epoch_checkpoints(inputs)
    fallback = read_meta(checkpoints[0].path).data if checkpoints else None
    cfg = data_config_from_cli(data, data_dir, data_opt, fallback=fallback)
    settings = EvalSettings(split, samples, batch_size, estimator, str(resolve_device(device)))
    from rich.progress import Progress

    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("cka-time: checkpoints", total=len(checkpoints))
        result = cka_over_time(checkpoints, layer, cfg, settings, progress=lambda n: bar.advance(task, n))
    _finish(result, figure, json_path, json_, force)


def _finish(result: CkaResult, figure: Path, json_path: Path, json_: bool, force: bool) -> None:
    """Write the JSON and the heatmap, say so on stderr, print the path (or the JSON)."""
    from mgtool.analysis.plot import PLOTS_HINT

    payload = result.write(figure, json_path, force=force)
    drawn = figure if payload["figure"] is not None else None
    if drawn is None:
        console.print(
            f"matplotlib is not installed: wrote {json_path} only; `{PLOTS_HINT}` draws the picture",
            markup=False,
            soft_wrap=True,
        )
    else:
        console.print(f"cka: {result.summary()} -> {drawn} and {json_path}", markup=False, soft_wrap=True)
    emit(drawn or json_path, payload, json_)


def register(app: typer.Typer) -> None:
    app.command("cka")(cka_cmd)
    app.command("cka-time")(cka_time_cmd)
