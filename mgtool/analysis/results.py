"""Typed CKA results: each knows its JSON, its heatmap and how to write both.

``LayerCka`` (``mgtool cka``, paper Fig. 5): every layer of A against every layer of B.
``TimeCka`` (``mgtool cka-time``, paper Fig. 4): one layer in every pair of checkpoints.
The JSON keys are the commands' documented output; ``write`` adds ``json`` and ``figure``.
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

from mgtool.analysis.checkpoints import EpochCheckpoint
from mgtool.analysis.estimators import ESTIMATORS
from mgtool.analysis.plot import matplotlib_available, plot_heatmap
from mgtool.checkpoint import atomic_write

if TYPE_CHECKING:
    from mgtool.data import DataConfig


@dataclass(frozen=True)
class CkaSide:
    """One side (rows or columns) of a layer-by-layer matrix: a checkpoint and its layers."""

    checkpoint: Path
    arch: dict[str, Any]
    layers: list[str]
    half: str  # first, second, N or both (all channels)

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoint": str(self.checkpoint), "arch": self.arch, "layers": self.layers, "half": self.half}

    def axis_name(self) -> str:
        half = "" if self.half == "both" else f", {self.half} half of channels"
        options = self.arch["options"]
        depth = f" depth {options['depth']}" if "depth" in options else ""
        return f"{self.checkpoint.name}\n{self.arch['name']}{depth} width {self.arch['width']:g}{half}"


@dataclass(frozen=True)
class Estimate:
    """What an estimation loop gives: the matrix and the samples and batches it saw."""

    matrix: Tensor  # float64, NaN where a representation is constant
    samples: int
    batches: int


@dataclass(frozen=True)
class CkaResult(ABC):
    estimator: str
    estimate: Estimate
    data: DataConfig
    split: str
    batch_size: int

    kind: ClassVar[str]

    @property
    def samples(self) -> int:
        return self.estimate.samples

    @property
    @abstractmethod
    def title(self) -> str: ...

    @abstractmethod
    def summary(self) -> str:
        """What the matrix holds, for the one-line report on stderr."""

    @abstractmethod
    def _axes(self) -> dict[str, Any]:
        """The JSON keys between ``matrix`` and ``data`` that say what the rows and columns are."""

    @abstractmethod
    def draw(self, figure: Path, force: bool = True) -> None: ...

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "estimator": self.estimator,
            "estimator_detail": ESTIMATORS[self.estimator].detail,
            "matrix": _jsonable(self.estimate.matrix),
            **self._axes(),
            "data": self.data.to_dict(),
            "split": self.split,
            "samples": self.estimate.samples,
            "batches": self.estimate.batches,
            "batch_size": self.batch_size,
        }

    def write(self, figure: Path, json_path: Path, *, force: bool) -> dict[str, Any]:
        """Write the heatmap (if matplotlib is installed) and the JSON; return the JSON written.
        Without ``force`` neither replaces a file that appeared there after the command's check."""
        drawn = matplotlib_available()
        payload = {**self.to_dict(), "json": str(json_path), "figure": str(figure) if drawn else None}
        if drawn:  # first: if drawing fails, nothing is written
            self.draw(figure, force)
        text = json.dumps(payload, indent=1) + "\n"
        atomic_write(json_path, lambda tmp: Path(tmp).write_text(text), force=force)
        return payload


@dataclass(frozen=True)
class LayerCka(CkaResult):
    rows: CkaSide
    cols: CkaSide

    kind = "cka"

    @property
    def title(self) -> str:
        a, b = self.rows.checkpoint.name, self.cols.checkpoint.name
        return f"CKA {a} vs {b} ({self.data.name}, {self.samples} samples)"

    def summary(self) -> str:
        return f"{len(self.rows.layers)}x{len(self.cols.layers)} layers, {self.samples} samples"

    def _axes(self) -> dict[str, Any]:
        return {"rows": self.rows.to_dict(), "cols": self.cols.to_dict()}

    def draw(self, figure: Path, force: bool = True) -> None:
        plot_heatmap(_jsonable(self.estimate.matrix), self.rows.layers, self.cols.layers, title=self.title,
                     row_axis=self.rows.axis_name(), col_axis=self.cols.axis_name(), out=figure, force=force)


@dataclass(frozen=True)
class TimeCka(CkaResult):
    layer: str
    checkpoints: list[EpochCheckpoint]

    kind = "cka-time"

    @property
    def labels(self) -> list[str]:
        several = len({c.run for c in self.checkpoints}) > 1
        return [c.label(several) for c in self.checkpoints]

    @property
    def title(self) -> str:
        return f"CKA over training at {self.layer} ({self.data.name}, {self.samples} samples)"

    def summary(self) -> str:
        n = len(self.checkpoints)
        return f"{n}x{n} checkpoints, {self.samples} samples"

    def _axes(self) -> dict[str, Any]:
        return {"layer": self.layer, "checkpoints": [
            {"path": str(c.path), "run": c.run, "epoch": c.epoch, "label": label}
            for c, label in zip(self.checkpoints, self.labels, strict=True)
        ]}

    def draw(self, figure: Path, force: bool = True) -> None:
        axis = "checkpoint (epoch)"
        plot_heatmap(_jsonable(self.estimate.matrix), self.labels, self.labels, title=self.title,
                     row_axis=axis, col_axis=axis, out=figure, force=force)


def _jsonable(matrix: Tensor) -> list[list[float | None]]:
    return [[None if math.isnan(v) else round(v, 6) for v in row] for row in matrix.tolist()]
