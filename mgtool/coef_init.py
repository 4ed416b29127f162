"""Initialisers for the new coefficient vectors of a grown layer (``fuse --init``), and the one
resolved ``--init`` choice (``InitSettings``) that ``fuse`` and recipes pass on.

A grown hidden layer has off-diagonal tiles that no small network trained. Each new
tile mixes from the template set of its row, so its coefficients are a vector of
length K (that set's templates). ``fuse`` calls one initialiser per (bank, set) with

* ``learned``: the trained vectors over that set, ``(n_learned, K)``: the small
  network's coefficients of every layer that uses the bank;
* ``copies``: for every new tile, the coefficients of the diagonal tile in the same
  row (what ``copy`` starts from), ``(n_new, K)``;
* ``generator`` and the initialiser's own settings as keyword arguments;

and gets back ``(n_new, K)``. All maths in float64; ``fuse`` casts to the model dtype.
``--init-norm authors-code`` is the one per-layer rule (``authors_code_tiles``): it needs
both diagonal tiles of a layer at once, as the authors' ``growth_update`` does.

Each initialiser declares its settings (``InitParam``: name, default, help, check), so
``fuse`` validates them once and the CLI takes any of them as ``--init-opt NAME=VALUE``.
Adding an initialiser with its own setting is one ``@register_init`` here plus its test.

Paper text versus the authors' code (chaudatascience/mixturegrowth at a2dad07,
``models/layers.py`` ``SModule.growth_update``, default ``--coefs_noise_growing 1``):

* paper, "random": a standard normal (``normal`` here); authors' code: uniform on
  [0, 1) (``random --init-norm unit``);
* paper, "orthogonal": vectors orthogonal to the learned ones over the same templates,
  norm not stated. ``--init-norm unit`` is mgtool's reading of that text (unit vectors
  orthogonal to the learned vectors of the same template set); ``capped`` (the default)
  is the same direction with each new tile's norm capped at ``CAP`` times its layer's
  diagonal tiles' (the rule mgtool's own measurements support, docs/results/);
  ``learned`` scales to the learned vectors' RMS norm (mgtool's old default).
  The authors' code does something else (``--init-norm authors-code``): tile (1, 0) gets
  ``svd(stack([c00, c11, c01])).Vh[-1]``, a unit vector against the coefficient vectors of
  *both* template sets and of the never-trained tile (0, 1), which it leaves at its
  construction-time random value;
* "copy": paper and code agree; the code adds one unit-norm uniform vector, shared by both
  new tiles of a layer (``copy --init-norm authors-code``); mgtool's ``noise`` is Gaussian
  per tile and off by default.
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


CAP = 0.1  # --init-norm capped: the largest tile ratio s a new tile may start at
# Where every measured arm held up (docs/results/growth-defaults.md): tile ratios up to 0.25 (demo regime, 3
# seeds; 0.5 and more lost 1.5-4 points, though a long fine-tune recovered from 0.8) and coefficient ratios up to
# 1 (init U, both CPU settings; init S lost at 4 and at 171-187).
HELD_TILE_RATIO = 0.25
HELD_COEFFICIENT_RATIO = 1.05  # copy sits at exactly 1; the margin keeps float round-off from warning
AUTHORS_CODE = "authors-code"


def _norm(choices: tuple[str, ...], default: str, help: str) -> InitParam:
    return choice("init_norm", choices, default, help)


@register_init("zero", "new tiles are 0: the grown net computes the sum of its inputs' logits", scalable=False)
def zero_init(learned: Tensor, copies: Tensor, generator: torch.Generator) -> Tensor:
    return torch.zeros_like(copies, dtype=torch.float64)


@register_init(
    "copy",
    "the coefficients of the diagonal tile of the same row, plus noise * N(0, 1); "
    "authors-code: plus one unit-norm uniform vector shared by the layer's new tiles",
    (number("noise", 0.0, "std of the Gaussian noise added to the copies", low=0.0),
     _norm(("learned", AUTHORS_CODE), "learned",
           f"learned: the copies as they are (plus --noise); {AUTHORS_CODE}: the authors' code's shared noise")),
)
def copy_init(learned: Tensor, copies: Tensor, generator: torch.Generator, *, noise: float,
              init_norm: str = "learned") -> Tensor:  # authors-code goes through authors_code_tiles
    out = copies.double().clone()
    if noise > 0:
        out += noise * torch.randn(out.shape, generator=generator, dtype=torch.float64)
    return out


@register_init(
    "random",
    "learned: N(0, 1) scaled so that E|v|^2 equals the learned vectors' mean |v|^2; "
    "unit: uniform on [0, 1) as in the authors' code",
    (_norm(("learned", "unit"), "learned", "learned: at the learned vectors' RMS norm; unit: uniform on [0, 1), "
           "the authors' code's random vector"),),
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
    "orthogonal to each other and to every learned vector over the same templates; capped (default): unit "
    f"vectors, each new tile's norm capped at {CAP:g} of its layer's diagonal tiles'",
    (_norm(("capped", "unit", "learned", AUTHORS_CODE), "capped",
           f"capped: unit vectors, tile ratio capped at s <= {CAP:g} per tile; unit: unit vectors (mgtool's reading "
           "of the paper); learned: at the learned vectors' RMS norm; "
           f"{AUTHORS_CODE}: the authors' code (pooled SVD vector for tile (1,0), tile (0,1) left random)"),),
)
def orthogonal_init(learned: Tensor, copies: Tensor, generator: torch.Generator, *, init_norm: str) -> Tensor:
    n, _ = copies.shape
    rows = orthogonal_complement_rows(learned.double(), n, generator)
    return rows * rms_norm(learned) if init_norm == "learned" else rows


def authors_code_tiles(init: str, diagonals: Tensor, generator: torch.Generator) -> dict[tuple[int, int], Tensor]:
    """One layer's new tiles as the authors' ``growth_update`` makes them (g = 2; float64).

    ``diagonals`` ``(2, K)``: tile (0, 0)'s and tile (1, 1)'s coefficients (net 1's over set 0,
    net 2's over set 1). Their member order is 0 = (0, 0), 1 = (1, 1), 2 = (0, 1), 3 = (1, 0).

    * orthogonal: member 2 keeps the value the model was built with: row 2 of
      ``nn.init.orthogonal_`` on a (4, K) matrix, as their no-bank WRN builds its coefficients;
      member 3 = ``svd(stack([c0, c1, c2])).Vh[-1]``, one unit vector against all three (with
      K = 2 it cannot be orthogonal to all of them).
    * copy: one uniform vector scaled to unit norm, added to both copies (their
      ``--coefs_noise_growing 1``).
    """
    c0, c1 = diagonals[0].double(), diagonals[1].double()
    k = c0.shape[0]
    if init == "copy":
        noise = torch.rand(k, generator=generator, dtype=torch.float64)
        noise = noise / noise.norm()
        return {(0, 1): c0 + noise, (1, 0): c1 + noise}
    construction = torch.randn(4, k, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(construction if k <= 4 else construction.T)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)  # nn.init.orthogonal_'s sign convention
    c2 = (q if k <= 4 else q.T)[2]
    c3 = torch.linalg.svd(torch.stack([c0, c1, c2]), full_matrices=True).Vh[-1]
    return {(0, 1): c2, (1, 0): c3}


@dataclass(frozen=True)
class InitSettings:
    """A checked ``--init`` choice, resolved once: the initialiser, its settings, and how the new
    tiles' norms are set afterwards (``scale``: every tile at s = scale; ``cap``: s <= cap)."""

    init: CoefInit
    params: dict[str, Any]
    scale: float | None = None  # --init-scale S
    cap: float | None = None  # --init-norm capped

    @property
    def name(self) -> str:
        return self.init.name

    @property
    def per_layer(self) -> bool:
        """The authors' code's rule: both diagonal tiles of a layer at once (``authors_code_tiles``)."""
        return self.params.get("init_norm") == AUTHORS_CODE

    @property
    def rule(self) -> str:
        """How the new tiles' norms were set, for ``--json``: scale, capped, or the initialiser's own."""
        if self.scale is not None:
            return "scale"
        return "capped" if self.cap is not None else str(self.params.get("init_norm", "own"))

    def to_dict(self) -> dict[str, Any]:
        return {"init": self.name, "init_options": dict(self.params), "init_scale": self.scale,
                "init_rule": self.rule, "init_cap": self.cap}


def resolve_init(
    name: str,
    *,
    scale: float | None = None,
    noise: float = 0.0,
    init_norm: str | None = None,
    options: Mapping[str, Any] | None = None,
) -> InitSettings:
    """Check an initialiser choice once: its name, its own settings, and ``scale``.

    ``noise`` and ``init_norm`` are the named settings the CLI has flags for; ``options``
    holds any declared setting by name. ``noise`` 0 means "not given". ``scale`` overrides the
    default norm rule; with an explicit ``init_norm`` other than ``learned`` it is refused.
    """
    init = get_init(name)
    given = dict(options or {})
    if noise != 0.0:
        given["noise"] = noise
    if init_norm is not None:
        given["init_norm"] = init_norm
    if scale is not None:
        check_range("init_scale", scale, low=0.0)
        if not init.scalable:
            raise SettingError("init_scale", f"does not apply to --init {name} (its new tiles are 0)")
        norm = given.get("init_norm")
        if norm not in (None, "learned"):
            raise SettingError("init_scale", f"sets the new tiles' norm, and --init-norm {norm} sets it too: "
                                             "give one of them")
        if init.param("init_norm") is not None:
            given["init_norm"] = "learned"  # only the direction matters once the scale is set
    params = init.settings(given)
    norm = params.get("init_norm")
    if norm == AUTHORS_CODE and name not in ("orthogonal", "copy"):
        raise SettingError("init_norm", f"{AUTHORS_CODE} applies to --init orthogonal and copy")
    return InitSettings(init, params, float(scale) if scale is not None else None,
                        CAP if norm == "capped" else None)  # with a scale, the norm is "learned"


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

