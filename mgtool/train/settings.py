"""The one source of training settings.

``TrainSettings`` is what a user may set for one training run (CLI options and a recipe's
``train:`` sections are both made from it); every field left ``None`` is filled, in this
order, from the chosen ``--protocol``, from the data set's preset (its registry entry
names one: ``standard`` for CIFAR-style sets, ``imagenet``), then from ``DEFAULTS``.
``resolve`` returns the ``TrainConfig`` the trainer uses and stores in checkpoints.

This module imports no torch, so help texts built from it cost nothing.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from mgtool.errors import SettingError, check_choice, check_range

OPTIMIZERS = ("sgd", "adamw")
# cosine, step, constant: set every optimizer step. cosine-restarts: the authors' post-growth
# schedule, set once per epoch (timm CosineLRScheduler with cycles, warm-up not a prefix).
SCHEDULES = ("cosine", "step", "constant", "cosine-restarts")
PROTOCOLS = ("authors",)


def _opt(flag: str, help: str, *, metavar: str | None = None) -> dict[str, Any]:
    return {"flag": flag, "help": help, "metavar": metavar}


@dataclass(frozen=True)
class TrainSettings:
    """One training run's settings as given; None means "the default" (see the module docstring)."""

    epochs: int | None = field(default=None, metadata=_opt(
        "--epochs", "Epochs of the schedule (train-small: 0 writes the fresh, untrained net)."))
    batch_size: int | None = field(default=None, metadata=_opt(
        "--batch-size", "Global batch size (split over DDP processes)."))
    lr: float | None = field(default=None, metadata=_opt("--lr", "Peak learning rate."))
    weight_decay: float | None = field(default=None, metadata=_opt(
        "--wd", "Weight decay of weights, templates and biases."))
    coef_weight_decay: float | None = field(default=None, metadata=_opt(
        "--coef-wd", "Weight decay of template-mixing coefficients (the authors' code: 0)."))
    norm_weight_decay: float | None = field(default=None, metadata=_opt(
        "--norm-wd", "Weight decay of normalisation layers' affine parameters (default: as --wd)."))
    momentum: float | None = field(default=None, metadata=_opt("--momentum", "SGD momentum (AdamW: beta1)."))
    nesterov: bool | None = field(default=None, metadata=_opt("--nesterov/--no-nesterov", "Nesterov momentum (SGD)."))
    optimizer: str | None = field(default=None, metadata=_opt("--optimizer", "sgd or adamw."))
    schedule: str | None = field(default=None, metadata=_opt(
        "--schedule", "cosine, step, constant, or cosine-restarts (the authors' post-growth cycles, per epoch)."))
    milestones: tuple[float, ...] | None = field(default=None, metadata=_opt(
        "--milestones", "Epochs where the step schedule multiplies the lr by 0.1, e.g. 30,60,80.", metavar="E,E,..."))
    warmup_epochs: float | None = field(default=None, metadata=_opt("--warmup", "Linear warm-up epochs."))
    warmup_lr: float | None = field(default=None, metadata=_opt(
        "--warmup-lr", "Learning rate the warm-up starts from."))
    lr_min: float | None = field(default=None, metadata=_opt("--lr-min", "Learning rate the schedule anneals to."))
    cycles: int | None = field(default=None, metadata=_opt("--cycles", "cosine-restarts: number of cosine cycles."))
    cycle_decay: float | None = field(default=None, metadata=_opt(
        "--cycle-decay", "cosine-restarts: each cycle's peak is this times the last one's."))
    budget: float | None = field(default=None, metadata=_opt(
        "--budget", "Train a complete schedule sized to this fraction of --epochs (warm-up, then annealing to "
        "the end): the fair 'same FLOPs' run."))
    stop_at: float | None = field(default=None, metadata=_opt(
        "--stop-at", "Follow the full --epochs schedule but stop after this fraction of its steps (the lr is "
        "then not annealed)."))
    protocol: str | None = field(default=None, metadata=_opt(
        "--protocol", "A preset for training after growth: 'authors' (the MixtureGrowth code: lr 1e-4, 4 cosine "
        "cycles decaying 0.5 to 3e-5 stepped per epoch, 1 warm-up epoch from 1e-5, coefficient wd 0)."))

    def given(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def merged(self, other: TrainSettings) -> TrainSettings:
        """These settings with every value ``other`` gives taken instead."""
        return dataclasses.replace(self, **other.given())


# mgtool's own defaults: the paper's CIFAR recipe (section 4.1).
DEFAULTS: dict[str, Any] = {
    "batch_size": 128, "lr": 0.1, "weight_decay": 5e-4, "coef_weight_decay": 0.0, "norm_weight_decay": None,
    "momentum": 0.9, "nesterov": True, "optimizer": "sgd", "schedule": "cosine", "milestones": (),
    "warmup_epochs": 1.0, "warmup_lr": 0.0, "lr_min": 0.0, "cycles": 1, "cycle_decay": 1.0,
}
WARMUP_FRACTION_CAP = 0.05  # the default warm-up is at most 5% of a short run

# What a data set's registry entry may name. Milestones are fractions of the run here.
PRESETS: dict[str, dict[str, Any]] = {
    "standard": {},
    "imagenet": {"batch_size": 256, "weight_decay": 1e-4, "schedule": "step",
                 "milestones": (30 / 90, 60 / 90, 80 / 90), "warmup_epochs": 0.0},
}

PROTOCOL_VALUES: dict[str, dict[str, Any]] = {
    "authors": {"lr": 1e-4, "schedule": "cosine-restarts", "cycles": 4, "cycle_decay": 0.5, "lr_min": 3e-5,
                "warmup_epochs": 1.0, "warmup_lr": 1e-5, "coef_weight_decay": 0.0},
}


@dataclass(frozen=True)
class TrainConfig:
    """A resolved training recipe: what the trainer uses; every field enters the resume fingerprint."""

    epochs: int
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    coef_weight_decay: float = 0.0
    norm_weight_decay: float | None = None  # None: weight_decay
    optimizer: str = "sgd"
    schedule: str = "cosine"
    milestones: tuple[float, ...] = ()  # in epochs
    warmup_epochs: float = 0.0
    warmup_lr: float = 0.0
    lr_min: float = 0.0
    cycles: int = 1
    cycle_decay: float = 1.0
    budget: float = 1.0  # length of the (complete) schedule, as a fraction of epochs
    stop_at: float = 1.0  # stop after this fraction of the schedule's steps
    protocol: str | None = None
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["milestones"] = list(self.milestones)
        return d

    @property
    def per_epoch(self) -> bool:
        """Whether the learning rate is set once per epoch (the authors' post-growth schedule)."""
        return self.schedule == "cosine-restarts"

    def validate(self) -> TrainConfig:
        check_range("epochs", self.epochs, low=0)  # 0: no training (train-small writes the fresh net)
        check_range("batch_size", self.batch_size, low=1)
        check_range("lr", self.lr, low=0, low_open=True)
        check_range("momentum", self.momentum, low=0, high=1, high_open=True)
        for name in ("weight_decay", "coef_weight_decay", "warmup_lr", "lr_min"):
            check_range(name, getattr(self, name), low=0)
        if self.norm_weight_decay is not None:
            check_range("norm_weight_decay", self.norm_weight_decay, low=0)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_range("budget", self.budget, low=0, high=1, low_open=True)  # first: the warm-up's bound uses it
        check_range("warmup_epochs", self.warmup_epochs, low=0, high=self.epochs * self.budget)
        check_range("stop_at", self.stop_at, low=0, high=1, low_open=True)
        check_range("cycles", self.cycles, low=1)
        check_range("cycle_decay", self.cycle_decay, low=0, high=1, low_open=True)
        if self.lr_min > self.lr:
            raise SettingError("lr_min", f"({self.lr_min:g}) must not exceed --lr ({self.lr:g})")
        if self.schedule == "step" and not self.milestones:
            raise SettingError("milestones", "must be given for the step schedule, e.g. 30,60,80")
        span = self.epochs * self.budget
        if any(not (0 < m <= span) or not math.isfinite(m) for m in self.milestones):
            raise SettingError("milestones", f"must lie in (0, {span:g}], got {list(self.milestones)}")
        if self.budget < 1 and self.stop_at < 1:
            raise SettingError("stop_at", "and --budget cannot both be given: --budget sizes a complete schedule, "
                                          "--stop-at cuts the full one")
        return self


def preset_values(preset: str) -> dict[str, Any]:
    try:
        return PRESETS[preset]
    except KeyError:
        raise SettingError("preset", f"must be one of {', '.join(PRESETS)}, got {preset!r}") from None


def resolve(settings: TrainSettings, *, preset: str = "standard", seed: int = 0) -> TrainConfig:
    """The ``TrainConfig`` for ``settings`` (see the module docstring for the order of defaults)."""
    given = settings.given()
    protocol = given.get("protocol")
    if protocol is not None:
        check_choice("protocol", protocol, PROTOCOLS)
    epochs = given.get("epochs")
    if epochs is None:
        raise SettingError("epochs", "must be given")
    check_range("epochs", epochs, low=0)
    base = {**DEFAULTS, **preset_values(preset)}
    if "milestones" not in given and preset_values(preset).get("milestones"):
        base["milestones"] = tuple(round(f * epochs, 6) for f in base["milestones"])
    values = {**base, **PROTOCOL_VALUES.get(protocol or "", {}), **given}
    if values["schedule"] != base["schedule"] and "milestones" not in given:
        values["milestones"] = ()
    if "warmup_epochs" not in given and protocol is None and values["warmup_epochs"]:
        length = epochs * values.get("budget", 1.0)
        values["warmup_epochs"] = round(min(values["warmup_epochs"], WARMUP_FRACTION_CAP * length), 6)
    values["milestones"] = tuple(float(m) for m in values["milestones"])
    values.setdefault("budget", 1.0)
    values.setdefault("stop_at", 1.0)
    return TrainConfig(seed=seed, **values).validate()


def default_help(name: str) -> str:
    """The defaults of one setting as help text: mgtool's, the presets' and the protocols' own."""
    parts = []
    if name in DEFAULTS and DEFAULTS[name] not in (None, ()):
        parts.append(f"default: {_fmt(DEFAULTS[name])}")
    for preset, values in PRESETS.items():
        if name in values:
            parts.append(f"{preset} data: {_fmt(values[name])}")
    for protocol, values in PROTOCOL_VALUES.items():
        if name in values:
            parts.append(f"--protocol {protocol}: {_fmt(values[name])}")
    return f" ({'; '.join(parts)})" if parts else ""


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(f"{v:.3g}" for v in value) + " of the run" if value else "none"
    return f"{value:g}" if isinstance(value, float) else str(value)
