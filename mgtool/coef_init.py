"""Initialisers for the new coefficient vectors of a grown layer (``fuse --init``).

A grown hidden layer has off-diagonal tiles that no small network trained. Each new
tile mixes from the template set of its row, so its coefficients are a vector of
length K (that set's templates). ``fuse`` calls one initialiser per (bank, set) with

* ``learned``: the trained vectors over that set, ``(n_learned, K)``: the small
  network's coefficients of every layer that uses the bank;
* ``copies``: for every new tile, the coefficients of the diagonal tile in the same
  row (what ``copy`` starts from), ``(n_new, K)``;
* ``generator`` and the initialiser's own settings as keyword arguments;

and gets back ``(n_new, K)``. All maths in float64; ``fuse`` casts to the model dtype.

Each initialiser declares its settings (``InitParam``: name, default, help, check), so
``fuse`` validates them once and the CLI takes any of them as ``--init-opt NAME=VALUE``.
Adding an initialiser with its own setting is one ``@register_init`` here plus its test.

Paper text versus the authors' code (chaudatascience/mixturegrowth, ``models/layers.py``,
with their default ``--coefs_noise_growing 1``):

* paper, "random": a standard normal (``normal`` here); authors' code: uniform on
  [0, 1) (``random --init-norm unit``);
* paper, "orthogonal": vectors orthogonal to the learned ones over the same templates,
  norm not stated; authors' code: the unit vector ``svd(previous).Vh[-1]``
  (``orthogonal --init-norm unit``);
* ``--init-norm learned`` (the default) scales them to the learned vectors' RMS norm:
  mgtool's choice, neither paper nor code;
* "copy": paper and code agree; the code's optional noise is a uniform vector scaled to
  unit norm, mgtool's ``noise`` is Gaussian.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mgtool.errors import SettingError, check_choice, check_range
from mgtool.mixing import orthonormal_rows

InitFn = Callable[..., Tensor]  # fn(learned, copies, generator, **settings) -> (n_new, K)


@dataclass(frozen=True)
class InitParam:
    """One setting of an initialiser. ``name`` is its library name (``noise``, ``init_norm``)."""

    name: str
    default: Any
    help: str
    check: Callable[[str, Any], Any]  # (name, value) -> the value to use; raises SettingError


def choice(name: str, choices: tuple[str, ...], default: str, help: str) -> InitParam:
    return InitParam(name, default, help, lambda field, v: check_choice(field, v, choices))


def number(name: str, default: float, help: str, *, low: float | None = None) -> InitParam:
    def check(field: str, v: Any) -> float:
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise SettingError(field, f"must be a number, got {v!r}") from None
        return float(check_range(field, v, low=low))

    return InitParam(name, default, help, check)


@dataclass(frozen=True)
class CoefInit:
    name: str
    fn: InitFn
    summary: str
    params: tuple[InitParam, ...] = ()
    scalable: bool = True  # False: --init-scale cannot apply (zero tiles have no norm to set)

    def param(self, name: str) -> InitParam | None:
        return next((p for p in self.params if p.name == name), None)

    def settings(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """Every setting of this initialiser: ``given`` values checked, defaults for the rest."""
        names = [p.name for p in self.params]
        for key in given:
            if key not in names:
                known = f"its settings: {', '.join(names)}" if names else "it takes none"
                raise SettingError(key, f"is not a setting of --init {self.name} ({known})")
        return {p.name: p.check(p.name, given[p.name]) if p.name in given else p.default for p in self.params}


_INITS: dict[str, CoefInit] = {}


def register_init(
    name: str, summary: str, params: tuple[InitParam, ...] = (), *, scalable: bool = True
) -> Callable[[InitFn], InitFn]:
    """Decorator: add an initialiser under ``name``; a second use of a name is refused."""

    def add(fn: InitFn) -> InitFn:
        if name in _INITS:
            raise ValueError(f"coefficient initialiser {name!r} is registered twice")
        _INITS[name] = CoefInit(name, fn, summary, params, scalable)
        return fn

    return add


def init_names() -> list[str]:
    return sorted(_INITS)


def get_init(name: str) -> CoefInit:
    try:
        return _INITS[name]
    except KeyError:
        raise SettingError("init", f"must be one of {', '.join(init_names())}, got {name!r}") from None


def rms_norm(learned: Tensor) -> float:
    """Root-mean-square Euclidean norm of the learned vectors (1.0 if there are none or all are 0)."""
    if learned.numel() == 0:
        return 1.0
    value = float(learned.double().pow(2).sum(dim=1).mean().sqrt())
    return value if value > 0 else 1.0


NORMS = ("learned", "unit")
_NORM = choice(
    "init_norm", NORMS, "learned",
    "learned: at the learned vectors' RMS norm; unit: the authors' code's literal vector",
)


@register_init("zero", "new tiles are 0: the grown net computes the sum of its inputs' logits", scalable=False)
def zero_init(learned: Tensor, copies: Tensor, generator: torch.Generator) -> Tensor:
    return torch.zeros_like(copies, dtype=torch.float64)


@register_init(
    "copy",
    "the coefficients of the diagonal tile of the same row, plus noise * N(0, 1)",
    (number("noise", 0.0, "std of the Gaussian noise added to the copies", low=0.0),),
)
def copy_init(learned: Tensor, copies: Tensor, generator: torch.Generator, *, noise: float) -> Tensor:
    out = copies.double().clone()
    if noise > 0:
        out += noise * torch.randn(out.shape, generator=generator, dtype=torch.float64)
    return out


@register_init(
    "random",
    "learned: N(0, 1) scaled so that E|v|^2 equals the learned vectors' mean |v|^2; "
    "unit: uniform on [0, 1) as in the authors' code",
    (_NORM,),
)
def random_init(learned: Tensor, copies: Tensor, generator: torch.Generator, *, init_norm: str) -> Tensor:
    n, k = copies.shape
    if init_norm == "unit":
        return torch.rand(n, k, generator=generator, dtype=torch.float64)
    gauss = torch.randn(n, k, generator=generator, dtype=torch.float64)
    return gauss * (rms_norm(learned) / math.sqrt(k))


@register_init("normal", "N(0, 1) exactly as printed in the paper (no rescaling)")
def normal_init(learned: Tensor, copies: Tensor, generator: torch.Generator) -> Tensor:
    return torch.randn(copies.shape, generator=generator, dtype=torch.float64)


@register_init(
    "orthogonal",
    "orthogonal to each other and to every learned vector over the same templates; "
    "learned: at the learned vectors' RMS norm; unit: unit vectors as in the authors' code",
    (_NORM,),
)
def orthogonal_init(learned: Tensor, copies: Tensor, generator: torch.Generator, *, init_norm: str) -> Tensor:
    n, _ = copies.shape
    rows = orthogonal_complement_rows(learned.double(), n, generator)
    return rows if init_norm == "unit" else rows * rms_norm(learned)


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

