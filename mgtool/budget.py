"""FLOPs budgets: how long to train a model to spend a given number of training FLOPs,
and the paper's FLOPs Norm (net 1 is given; the rest is charged against training the
large network from scratch for its full schedule)."""

from __future__ import annotations

import math

from mgtool.errors import MgtoolError


def samples_per_epoch(train_size: int, batch_size: int) -> int:
    """What the engine charges per epoch: whole batches only (the tail is dropped)."""
    return (train_size // batch_size) * batch_size


def epochs_for_flops(target: float, flops_per_sample: float, epoch_samples: int) -> tuple[int, float]:
    """``(epochs, budget)`` so that a run of ``epochs`` stopped at ``budget`` of its FLOPs
    spends ``target``: the schedule is the next whole number of epochs and is cut off
    where the FLOPs run out (for a cosine schedule the learning rate is then near zero)."""
    if target <= 0:
        raise MgtoolError(f"no FLOPs left to train with (target {target:.4g}); raise the budget")
    x = target / (flops_per_sample * epoch_samples)
    epochs = max(1, math.ceil(x - 1e-9))
    return epochs, min(1.0, x / epochs)


def flops_norm(charged: float, reference: float) -> float:
    """The paper's FLOPs Norm: charged training FLOPs over the large net's full schedule."""
    return charged / reference if reference > 0 else float("nan")
