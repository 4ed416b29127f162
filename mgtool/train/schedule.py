"""Learning-rate schedules as pure functions of the optimizer step.

The schedule position is just the step counter, so resuming needs no scheduler
object: ``lr(step)`` is recomputed. Warm-up is linear from ``base_lr / warmup_steps``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from mgtool.errors import MgtoolError

SCHEDULES = ("cosine", "step", "constant")


@dataclass(frozen=True)
class Schedule:
    kind: str
    base_lr: float
    total_steps: int
    warmup_steps: int = 0
    milestones: tuple[int, ...] = ()  # steps at which a "step" schedule multiplies by gamma
    gamma: float = 0.1

    def lr(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            t = min(1.0, (step - self.warmup_steps) / span)
            return 0.5 * self.base_lr * (1.0 + math.cos(math.pi * t))
        if self.kind == "step":
            return self.base_lr * self.gamma ** sum(step >= m for m in self.milestones)
        return self.base_lr


def make_schedule(kind: str, base_lr: float, epochs: int, steps_per_epoch: int, *,
                  warmup_epochs: float = 0.0, milestones: tuple[float, ...] = (),
                  gamma: float = 0.1) -> Schedule:
    """A schedule over ``epochs`` full epochs; milestones and warm-up are given in epochs."""
    if kind not in SCHEDULES:
        raise MgtoolError(f"--schedule must be one of {SCHEDULES}, got {kind!r}")
    if base_lr <= 0 or not math.isfinite(base_lr):
        raise MgtoolError(f"--lr must be a positive number, got {base_lr}")
    if warmup_epochs < 0 or warmup_epochs > epochs:
        raise MgtoolError(f"--warmup must be between 0 and --epochs ({epochs}), got {warmup_epochs:g}")
    if kind == "step" and not milestones:
        raise MgtoolError("--schedule step needs --milestones, e.g. 30,60,80")
    if any(m <= 0 or m > epochs for m in milestones):
        raise MgtoolError(f"--milestones must lie in (0, {epochs}], got {list(milestones)}")
    total = epochs * steps_per_epoch
    return Schedule(kind, base_lr, total, round(warmup_epochs * steps_per_epoch),
                    tuple(round(m * steps_per_epoch) for m in sorted(milestones)), gamma)
