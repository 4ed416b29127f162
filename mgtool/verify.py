"""Function preservation: the logit check of convert, fuse --verify and grow net2net, and the
per-weight check of convert.

A check compares two models on one fixed random batch in eval mode. It passes when the
largest absolute logit difference is within ``tolerance`` of the logit scale (the
largest absolute logit of the reference, at least 1e-3). ``require_preserved`` turns a
failed check into the one-line error every writer gives before writing nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mgtool.archs import ArchSpec, input_size
from mgtool.errors import MgtoolError

VERIFY_BATCH = 4
RELATIVE_TOLERANCE = 1e-5  # max |logit difference| / logit scale: convert, fuse --verify, net2net
MIN_LOGIT_SCALE = 1e-3
# max |generated - original| / max |original|, per weight. Exact conversion in float32 measures
# about 3e-7 (bench/convert_exactness.py); a layer whose bank-mate is 1000x larger measures ~1e-4.
WEIGHT_TOLERANCE = 1e-5


@dataclass(frozen=True)
class LogitCheck:
    max_abs_diff: float
    scale: float
    tolerance: float = RELATIVE_TOLERANCE

    @property
    def relative(self) -> float:
        return self.max_abs_diff / self.scale

    @property
    def ok(self) -> bool:
        return math.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.tolerance * self.scale

    def to_dict(self) -> dict[str, float]:
        """How a logit comparison is reported in --json output."""
        return {"max_abs_logit_diff": self.max_abs_diff, "logit_scale": self.scale,
                "relative_logit_diff": self.relative}


class VerifiedResult:
    """For result dataclasses with a ``verify: LogitCheck | None`` field: its figures, or None."""

    verify: LogitCheck | None

    @property
    def max_abs_logit_diff(self) -> float | None:
        return self.verify.max_abs_diff if self.verify else None

    @property
    def logit_scale(self) -> float | None:
        return self.verify.scale if self.verify else None


def _dtype(model: nn.Module) -> torch.dtype:
    tensor = next((p for p in model.parameters() if p.is_floating_point()), None)
    return tensor.dtype if tensor is not None else torch.float32


@torch.no_grad()
def compare_logits(reference: nn.Module, candidate: nn.Module, spec: ArchSpec, *, seed: int = 0,
                   tolerance: float = RELATIVE_TOLERANCE) -> LogitCheck:
    """Both models on one fixed float32 batch (cast to each model's dtype), eval mode."""
    h, w = input_size(spec)
    x = torch.randn(VERIFY_BATCH, spec.in_chans, h, w, generator=torch.Generator().manual_seed(seed))
    ya = reference.eval()(x.to(_dtype(reference)))
    yb = candidate.eval()(x.to(_dtype(candidate)))
    diff = float((ya.double() - yb.double()).abs().max())
    return LogitCheck(diff, max(float(ya.abs().max()), MIN_LOGIT_SCALE), tolerance)


def require_preserved(check: LogitCheck, what: str) -> LogitCheck:
    """``check`` if it passed, else the one-line error: ``what`` names the two sides."""
    if not check.ok:
        raise MgtoolError(
            f"{what} by {check.max_abs_diff:.3g} in the logits (scale {check.scale:.3g}, "
            f"tolerance {check.tolerance:g} relative); nothing written"
        )
    return check


@dataclass(frozen=True)
class WeightCheck:
    """The worst tensor by its error relative to its own scale (max |original|)."""

    key: str
    max_abs_diff: float  # over every tensor
    worst_relative: float
    worst_scale: float
    tolerance: float = WEIGHT_TOLERANCE

    @property
    def ok(self) -> bool:
        return math.isfinite(self.worst_relative) and self.worst_relative <= self.tolerance


def compare_weights(original: Mapping[str, Tensor], generated: Mapping[str, Tensor], *,
                    tolerance: float = WEIGHT_TOLERANCE) -> WeightCheck:
    """Every floating tensor of ``original`` against ``generated``, each relative to its own scale.

    A tensor that is 0 everywhere must come back exactly 0.
    """
    worst = ("", 0.0, 0.0)
    overall = 0.0
    for key, value in original.items():
        if not value.is_floating_point():
            if not torch.equal(generated[key], value):
                return WeightCheck(key, math.inf, math.inf, 0.0, tolerance)
            continue
        ref = value.detach().double()
        diff = float((generated[key].detach().double() - ref).abs().max()) if ref.numel() else 0.0
        scale = float(ref.abs().max()) if ref.numel() else 0.0
        relative = diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)
        overall = max(overall, diff)
        if not relative <= worst[1]:  # also takes NaN
            worst = (key, relative, scale)
    return WeightCheck(worst[0], overall, worst[1], worst[2], tolerance)


def require_exact_weights(check: WeightCheck, what: str, remedy: str = "") -> WeightCheck:
    if not check.ok:
        raise MgtoolError(
            f"{what}: {check.key} comes back {check.worst_relative:.3g} off relative to its own scale "
            f"{check.worst_scale:.3g} (tolerance {check.tolerance:g}); nothing written{remedy}"
        )
    return check
