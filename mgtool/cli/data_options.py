"""Reusable typer options for commands that read a data set (train-small, finetune, eval, cka)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from mgtool.cli.common import parse_options
from mgtool.errors import MgtoolError

DataOpt = Annotated[str | None, typer.Option(
    "--data", help="Data set by name, e.g. cifar10, cifar100, imagenet, fashion-mnist, mnist, imagefolder, "
    "synthetic (an unknown name lists them all).",
    show_default=False)]
DataDirOpt = Annotated[Path | None, typer.Option(
    "--data-dir", help="Folder holding the data set (default: $MGTOOL_DATA_DIR, else ./data).",
    show_default=False)]
DataOptOpt = Annotated[list[str] | None, typer.Option(
    "--data-opt", help="Data option KEY=VALUE (repeatable), e.g. shape=3x16x16, cutout=0.",
    show_default=False, metavar="KEY=VALUE")]
DownloadOpt = Annotated[bool, typer.Option("--download", help="Download the data set if missing (cifar, mnist).")]
SplitOpt = Annotated[str, typer.Option("--split", help="Split: train or test (val = test).")]
LimitOpt = Annotated[int | None, typer.Option("--limit", help="Use only the first N samples.",
                                                 show_default=False)]
BatchSizeEvalOpt = Annotated[int, typer.Option("--batch-size", help="Evaluation batch size.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (cuda if available), cpu, cuda or cuda:N.")]


def data_config_from_cli(data: str | None, data_dir: Path | None, data_opt: list[str] | None,
                         download: bool = False, fallback: dict[str, Any] | None = None):
    """The resolved ``DataConfig`` from the options, or from ``fallback`` (a checkpoint's
    data section) when ``--data`` is omitted; --data-dir and --data-opt override it."""
    from mgtool.data import DataConfig, data_config

    options = parse_options(data_opt)
    if data is None:
        if fallback is None:
            raise MgtoolError("no data set: pass --data NAME (the checkpoint names none)")
        stored = DataConfig.from_dict(fallback)
        return data_config(stored.name, data_dir if data_dir is not None else stored.data_dir,
                           {**stored.options, **options}, download)
    return data_config(data, data_dir, options, download)
