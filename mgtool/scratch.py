"""Train a plain (standard) network from scratch: the paper's *Large* and *Large Match* rows."""

from __future__ import annotations

from pathlib import Path

import torch

from mgtool.archs import ArchSpec, build_plain, resolve_spec
from mgtool.data import DataConfig
from mgtool.train import FitResult, Lineage, Runtime, TrainConfig, fit


def train_plain(out: Path | str, spec: ArchSpec, data: DataConfig, train: TrainConfig, runtime: Runtime,
                *, resume: bool = False, force: bool = False) -> FitResult:
    """The family's own initialisation (seeded by ``train.seed``), trained with the engine."""
    spec = resolve_spec(spec)
    torch.manual_seed(train.seed)
    net = build_plain(spec)
    lineage = Lineage("train-scratch", "plain", spec, None)
    return fit(net, lineage, data, train, runtime, out, resume=resume, force=force)
