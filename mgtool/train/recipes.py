"""The paper's training recipes (section 4.1) as defaults per data set.

CIFAR-style sets: SGD, Nesterov momentum 0.9, weight decay 5e-4, lr 0.1, cosine with
a short linear warm-up (1 epoch, or 5% of a shorter run), batch 128 (cutout is a data
option of CIFAR). ImageNet: lr 0.1 decayed by 0.1 at epochs 30/60/80 of 90 (scaled
to --epochs), batch 256, weight decay 1e-4 (the paper does not state it; 1e-4 is the
standard ResNet-50 value), no warm-up.
"""

from __future__ import annotations

from dataclasses import dataclass

from mgtool.train.engine import TrainConfig


@dataclass(frozen=True)
class Recipe:
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    momentum: float = 0.9
    nesterov: bool = True
    schedule: str = "cosine"
    milestones: tuple[float, ...] = ()  # fractions of the run
    warmup_epochs: float = 1.0
    warmup_fraction_cap: float = 0.05


CIFAR = Recipe()
IMAGENET = Recipe(batch_size=256, weight_decay=1e-4, schedule="step",
                  milestones=(30 / 90, 60 / 90, 80 / 90), warmup_epochs=0.0)


def recipe_for(dataset: str) -> Recipe:
    return IMAGENET if dataset == "imagenet" else CIFAR


def train_config(dataset: str, *, epochs: int, batch_size: int | None = None, lr: float | None = None,
                 weight_decay: float | None = None, momentum: float | None = None,
                 nesterov: bool | None = None, schedule: str | None = None,
                 milestones: tuple[float, ...] | None = None, warmup_epochs: float | None = None,
                 budget: float = 1.0, seed: int = 0) -> TrainConfig:
    """The data set's recipe with any explicitly given value taken instead."""
    r = recipe_for(dataset)
    kind = schedule or r.schedule
    if milestones is None:
        milestones = tuple(round(f * epochs, 6) for f in r.milestones) if kind == r.schedule else ()
    if warmup_epochs is None:
        warmup_epochs = round(min(r.warmup_epochs, r.warmup_fraction_cap * epochs), 6) if r.warmup_epochs else 0.0
    return TrainConfig(
        epochs=epochs,
        batch_size=batch_size if batch_size is not None else r.batch_size,
        lr=lr if lr is not None else r.lr,
        momentum=momentum if momentum is not None else r.momentum,
        nesterov=r.nesterov if nesterov is None else nesterov,
        weight_decay=weight_decay if weight_decay is not None else r.weight_decay,
        schedule=kind,
        milestones=tuple(milestones),
        warmup_epochs=warmup_epochs,
        budget=budget,
        seed=seed,
    )
