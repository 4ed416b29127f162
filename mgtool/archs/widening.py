"""How a family widens (``Family.widening``), and the zero-sum noise every widening uses.

A family whose tensors do not follow the channel-space tracing of ``grow_baselines``
(a CNN's convolutions, norms and residual connections) declares its own ``Widening``:
the ViT widens head by head by named tensor rules (``mgtool/archs/families/vit.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mgtool.archs.spec import ArchSpec


@dataclass(frozen=True)
class Widening:
    """A family's own widening rules, used by ``grow_baselines.grow`` in place of channel-space tracing.

    random: (net, spec, factor, seed) -> the wide net's own init with the small tensors in it.
    preserving: (net, spec, factor, *, method, seed, noise) -> (wide net, its unit maps), for
    ``net2net`` and ``clone``; ``noise`` is added with ``zero_sum_noise`` to every tensor that
    reads a widened space, so the function is kept.
    """

    random: Callable[[nn.Module, ArchSpec, int, int], nn.Module]
    preserving: Callable[..., tuple[nn.Module, Any]]


def zero_sum_noise(in_map: Tensor, shape: tuple[int, ...], ratio: float, scale: float,
                   generator: torch.Generator) -> Tensor:
    """Gaussian noise for a widened weight (input units on dim 1) that sums to zero over
    the copies of every source unit, so it leaves the function unchanged.

    Its RMS is ``ratio * scale`` (``scale``: the widened weight's RMS) over every
    column whose source unit has at least two copies, so the signal-to-noise power
    ratio of those columns is ``1 / ratio**2`` (``20 log10(1/ratio)`` dB); a unit with
    one copy gets none.
    """
    noise = torch.randn(shape, generator=generator, dtype=torch.float64)
    groups = in_map.long()
    counts = torch.bincount(groups).to(torch.float64)
    view = [1] * len(shape)
    view[1] = -1
    sums = torch.zeros(shape[0], counts.numel(), *shape[2:], dtype=torch.float64).index_add_(1, groups, noise)
    mean = sums.index_select(1, groups) / counts[groups].view(view)
    c = counts[groups]
    # Removing the mean of c samples leaves (c-1)/c of the variance; restore it.
    gain = torch.where(c > 1, torch.sqrt(c / (c - 1).clamp_min(1)), torch.zeros_like(c))
    return (noise - mean) * gain.view(view) * ratio * scale
