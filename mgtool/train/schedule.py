"""Learning-rate schedules, from ``timm.scheduler`` (the schedulers the paper's authors used).

A schedule is a function of the optimizer step: ``LrSchedule.set(step)`` writes the lr of
every parameter group for that step, so a resumed run needs no scheduler state. Lengths:

* ``budget`` < 1 (``--budget F``): the schedule is complete but ``F * epochs`` long
  (warm-up, then annealing to ``lr_min`` on its last step): the fair same-FLOPs run;
* ``stop_at`` < 1 (``--stop-at F``): the full schedule, cut after ``F`` of its steps.

``cosine`` anneals per step to ``lr_min`` (reached on the last step) after a linear
warm-up prefix from ``warmup_lr``; ``step`` multiplies by 0.1 at each milestone epoch;
``constant``; ``cosine-restarts`` is the authors' post-growth schedule: timm's
``CosineLRScheduler`` with ``cycles`` equal cycles of ``epochs // cycles`` epochs, each
peak ``cycle_decay`` times the last, ``warmup_epochs`` of warm-up that is not a prefix,
stepped once per epoch.
"""

from __future__ import annotations

import logging
import math

import torch
from timm.scheduler import CosineLRScheduler, MultiStepLRScheduler

from mgtool.train.settings import TrainConfig

# timm warns when a cosine has one step per cycle (a 1-epoch authors' protocol): not the user's concern.
logging.getLogger("timm.scheduler.cosine_lr").setLevel(logging.ERROR)


class LrSchedule:
    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int):
        self.optimizer, self.cfg, self.steps_per_epoch = optimizer, cfg, steps_per_epoch
        self.total_steps = max(1, round(cfg.budget * cfg.epochs * steps_per_epoch))
        self.stop_step = max(1, math.ceil(cfg.stop_at * self.total_steps - 1e-9))
        common = {"warmup_lr_init": cfg.warmup_lr, "t_in_epochs": cfg.per_epoch}
        if cfg.per_epoch:
            length = max(1, round(cfg.budget * cfg.epochs))
            self._timm = CosineLRScheduler(
                optimizer, t_initial=max(1, length // cfg.cycles), lr_min=cfg.lr_min, cycle_decay=cfg.cycle_decay,
                cycle_limit=cfg.cycles, warmup_t=round(cfg.warmup_epochs), warmup_prefix=False, **common)
            return
        # Per step, timm is asked at t = step + 1 (steps done once this one is): the warm-up then reaches
        # the peak on its last step and the cosine reaches lr_min on the schedule's last step.
        warmup = round(cfg.warmup_epochs * steps_per_epoch)
        if cfg.schedule == "cosine":
            self._timm = CosineLRScheduler(
                optimizer, t_initial=max(1, self.total_steps - warmup), lr_min=cfg.lr_min, warmup_t=warmup,
                warmup_prefix=True, **common)
        else:  # step / constant; timm applies milestone d from t = d - 1 on, so d = m + 2 decays from step m on
            milestones = [round(m * steps_per_epoch) + 2 for m in sorted(cfg.milestones)]
            self._timm = MultiStepLRScheduler(
                optimizer, decay_t=milestones if cfg.schedule == "step" else [], decay_rate=0.1, warmup_t=warmup,
                warmup_prefix=False, **common)

    def set(self, step: int) -> float:
        """Set every group's lr for optimizer step ``step`` (0-based); returns the base group's."""
        if self.cfg.per_epoch:
            self._timm.step(step // self.steps_per_epoch)
        else:
            self._timm.step_update(step + 1)
        return float(self.optimizer.param_groups[0]["lr"])


def schedule_lrs(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The lr of every step the run takes (for tests and plots)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    schedule = LrSchedule(opt, cfg, steps_per_epoch)
    return [schedule.set(step) for step in range(schedule.stop_step)]
