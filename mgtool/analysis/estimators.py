"""How a CKA matrix is estimated from the activations that models give on the same batches.

One interface for both estimators, so the loops over batches and checkpoints are written
once (``similarity.py``):

* ``keep(activation)``: what a forward hook stores for one layer and batch (a Gram
  matrix, or a copy of the flattened activation);
* ``check_memory(kept, copies)``: refuse, before the work, what would not fit;
* ``update(rows, cols)``: the kept tensors of one batch, one per row layer and one per
  column layer (``cols`` None: the same as ``rows``, a symmetric matrix);
* ``compute()``: the ``(rows, cols)`` float64 matrix, NaN where a representation is constant.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from mgtool.analysis.cka import MinibatchCKA, gram, linear_cka
from mgtool.errors import MgtoolError

FULL_MEMORY_LIMIT = 4 * 2**30  # bytes of stored activations the full estimator may hold


class Estimator(ABC):
    name: ClassVar[str]
    detail: ClassVar[str]

    def __init__(self, samples: int):
        self.samples = samples  # how many samples the run will see at most

    @abstractmethod
    def keep(self, activation: Tensor) -> Tensor: ...

    def check_memory(self, kept: Sequence[Tensor], copies: int = 1) -> None:  # noqa: B027 (optional hook)
        """``kept``: one batch's kept tensors; ``copies``: how many models give that many.
        Bounded-memory estimators accept anything."""

    @abstractmethod
    def update(self, rows: Sequence[Tensor], cols: Sequence[Tensor] | None = None) -> None: ...

    @abstractmethod
    def compute(self) -> Tensor: ...


class MinibatchEstimator(Estimator):
    name = "minibatch"
    detail = ("linear CKA, unbiased HSIC (Song et al. 2012) per batch, averaged over batches "
              "(Nguyen, Raghu & Kornblith 2021)")

    def __init__(self, samples: int):
        super().__init__(samples)
        self._acc = MinibatchCKA()

    def keep(self, activation: Tensor) -> Tensor:
        return gram(activation)

    def update(self, rows: Sequence[Tensor], cols: Sequence[Tensor] | None = None) -> None:
        grams = torch.stack(list(rows))
        self._acc.update(grams, grams if cols is None else torch.stack(list(cols)))

    def compute(self) -> Tensor:
        return self._acc.compute().cpu()


class FullEstimator(Estimator):
    name = "full"
    detail = "linear CKA, biased HSIC on all samples at once (Kornblith et al. 2019)"

    def __init__(self, samples: int):
        super().__init__(samples)
        self._rows: list[list[Tensor]] = []
        self._cols: list[list[Tensor]] | None = None

    def keep(self, activation: Tensor) -> Tensor:
        """Every activation, flattened (a copy: later in-place ops must not touch it)."""
        return activation.reshape(activation.shape[0], -1).to("cpu", torch.float32, copy=True)

    def check_memory(self, kept: Sequence[Tensor], copies: int = 1) -> None:
        needed = sum(t[0].numel() for t in kept) * copies * 4 * self.samples
        if needed > FULL_MEMORY_LIMIT:
            raise MgtoolError(
                f"--estimator full would keep {needed / 2**30:.1f} GiB of activations for {self.samples} "
                "samples; use --estimator minibatch (memory bounded) or fewer --samples"
            )

    def update(self, rows: Sequence[Tensor], cols: Sequence[Tensor] | None = None) -> None:
        if not self._rows:
            self._rows = [[] for _ in rows]
            self._cols = None if cols is None else [[] for _ in cols]
        for store, t in zip(self._rows, rows, strict=True):
            store.append(t)
        if self._cols is not None and cols is not None:
            for store, t in zip(self._cols, cols, strict=True):
                store.append(t)

    def compute(self) -> Tensor:
        xs = [torch.cat(s) for s in self._rows]
        ys = xs if self._cols is None else [torch.cat(s) for s in self._cols]
        return torch.tensor([[linear_cka(x, y) for y in ys] for x in xs], dtype=torch.float64)


ESTIMATORS: dict[str, type[Estimator]] = {e.name: e for e in (MinibatchEstimator, FullEstimator)}


def make_estimator(name: str, samples: int) -> Estimator:
    try:
        return ESTIMATORS[name](samples)
    except KeyError:
        raise MgtoolError(f"--estimator must be one of {', '.join(ESTIMATORS)}, got {name!r}") from None
