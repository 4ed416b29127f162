"""Initialisers for the new coefficient vectors of a grown layer (``fuse --init``).

A grown hidden layer has off-diagonal tiles that no small network trained. Each new
tile mixes from the template set of its row, so its coefficients are a vector of
length K (that set's templates). ``fuse`` calls one initialiser per (bank, set) with

* ``learned``: the trained vectors over that set, ``(n_learned, K)``: the small
  network's coefficients of every layer that uses the bank;
* ``copies``: for every new tile, the coefficients of the diagonal tile in the same
  row (what ``copy`` starts from), ``(n_new, K)``;

and gets back ``(n_new, K)``. All maths in float64; ``fuse`` casts to the model dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from mgtool.errors import MgtoolError
from mgtool.mixing import orthonormal_rows

InitFn = Callable[[Tensor, Tensor, torch.Generator, float], Tensor]


@dataclass(frozen=True)
class CoefInit:
    name: str
    fn: InitFn
    summary: str


_INITS: dict[str, CoefInit] = {}


def register_init(name: str, summary: str) -> Callable[[InitFn], InitFn]:
    """Decorator: add an initialiser under ``name``; a second use of a name is refused."""

    def add(fn: InitFn) -> InitFn:
        if name in _INITS:
            raise ValueError(f"coefficient initialiser {name!r} is registered twice")
        _INITS[name] = CoefInit(name, fn, summary)
        return fn

    return add


def init_names() -> list[str]:
    return sorted(_INITS)


def get_init(name: str) -> CoefInit:
    try:
        return _INITS[name]
    except KeyError:
        raise MgtoolError(f"unknown --init {name!r}; known: {', '.join(init_names())}") from None


def rms_norm(learned: Tensor) -> float:
    """Root-mean-square Euclidean norm of the learned vectors (1.0 if there are none or all are 0)."""
    if learned.numel() == 0:
        return 1.0
    value = float(learned.double().pow(2).sum(dim=1).mean().sqrt())
    return value if value > 0 else 1.0


@register_init("zero", "new tiles are 0: the grown net computes the sum of its inputs' logits")
def zero_init(learned: Tensor, copies: Tensor, generator: torch.Generator, noise: float) -> Tensor:
    return torch.zeros_like(copies, dtype=torch.float64)


@register_init("copy", "the coefficients of the diagonal tile of the same row, plus --noise * N(0, 1)")
def copy_init(learned: Tensor, copies: Tensor, generator: torch.Generator, noise: float) -> Tensor:
    out = copies.double().clone()
    if noise > 0:
        out += noise * torch.randn(out.shape, generator=generator, dtype=torch.float64)
    return out


@register_init("random", "N(0, 1) scaled so that E|v|^2 equals the learned vectors' mean |v|^2")
def random_init(learned: Tensor, copies: Tensor, generator: torch.Generator, noise: float) -> Tensor:
    n, k = copies.shape
    gauss = torch.randn(n, k, generator=generator, dtype=torch.float64)
    return gauss * (rms_norm(learned) / k**0.5)


@register_init("normal", "N(0, 1) exactly as printed in the paper (no rescaling)")
def normal_init(learned: Tensor, copies: Tensor, generator: torch.Generator, noise: float) -> Tensor:
    return torch.randn(copies.shape, generator=generator, dtype=torch.float64)


@register_init(
    "orthogonal",
    "orthogonal to each other and to every learned vector over the same templates, at the learned vectors' RMS norm",
)
def orthogonal_init(learned: Tensor, copies: Tensor, generator: torch.Generator, noise: float) -> Tensor:
    n, k = copies.shape
    return orthogonal_complement_rows(learned.double(), n, generator) * rms_norm(learned)


def orthogonal_complement_rows(learned: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """``n`` unit vectors: as many as fit are orthonormal and orthogonal to ``learned``.

    The first ``min(n, K - rank(learned))`` rows are a random orthonormal basis of part
    of the orthogonal complement of the learned vectors. When the dimension runs out,
    the remaining rows come in groups of at most K that are mutually orthonormal
    (each group the Q of a Gaussian matrix's QR), and are as orthogonal to the others
    as the dimension allows: not at all guaranteed.
    """
    k = learned.shape[1]
    complement = _complement_basis(learned)  # (K - rank, K), orthonormal rows
    fit = min(n, complement.shape[0])
    parts = []
    if fit:
        rotation = orthonormal_rows(fit, complement.shape[0], generator)  # (fit, K - rank)
        parts.append(rotation @ complement)
    left = n - fit
    while left > 0:
        chunk = min(left, k)
        parts.append(orthonormal_rows(chunk, k, generator))
        left -= chunk
    if not parts:
        return torch.zeros(0, k, dtype=torch.float64)
    return torch.cat(parts)


def _complement_basis(learned: Tensor) -> Tensor:
    k = learned.shape[1]
    if learned.shape[0] == 0:
        return torch.eye(k, dtype=torch.float64)
    _, s, vh = torch.linalg.svd(learned, full_matrices=True)
    # Learned vectors come from float32 training: treat float32 round-off as zero.
    tol = max(learned.shape) * torch.finfo(torch.float32).eps * float(s.max()) if s.numel() else 0.0
    rank = int((s > tol).sum())
    return vh[rank:]
