"""Batched augmentation on uint8 images, on whatever device they live on.

Random crop with zero padding, horizontal flip and cutout (DeVries & Taylor: a
square of side ``cutout`` centred anywhere, clipped at the border, filled with the
data set mean so that it is ~0 after normalisation). One call handles a whole
batch with a handful of tensor ops; the draws come from the given generator.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Augment:
    crop_padding: int = 0
    flip: bool = False
    cutout: int = 0
    fill: tuple[int, ...] = (0,)

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or self.flip or self.cutout > 0


def augment_batch(x: Tensor, aug: Augment, generator: torch.Generator) -> Tensor:
    """``x``: uint8 ``(B, C, H, W)``; returns a new uint8 tensor of the same shape."""
    if aug.crop_padding > 0:
        x = random_crop(x, aug.crop_padding, generator)
    if aug.flip:
        x = random_flip(x, generator)
    if aug.cutout > 0:
        x = cutout(x, aug.cutout, aug.fill, generator)
    return x


def random_crop(x: Tensor, padding: int, generator: torch.Generator) -> Tensor:
    b, c, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (b,), device=x.device, generator=generator)
    ox = torch.randint(0, 2 * padding + 1, (b,), device=x.device, generator=generator)
    rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    flip = torch.rand(x.shape[0], device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(3), x)


def cutout(x: Tensor, size: int, fill: tuple[int, ...], generator: torch.Generator) -> Tensor:
    b, c, h, w = x.shape
    cy = torch.randint(0, h, (b,), device=x.device, generator=generator)
    cx = torch.randint(0, w, (b,), device=x.device, generator=generator)
    r = torch.arange(h, device=x.device)
    q = torch.arange(w, device=x.device)
    in_rows = (r[None, :] >= (cy - size // 2)[:, None]) & (r[None, :] < (cy + size - size // 2)[:, None])
    in_cols = (q[None, :] >= (cx - size // 2)[:, None]) & (q[None, :] < (cx + size - size // 2)[:, None])
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]
    values = fill_values(fill, c, x.dtype, x.device)
    return torch.where(mask, values[None, :, None, None], x)


@functools.lru_cache(maxsize=16)
def fill_values(fill: tuple[int, ...], channels: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The cutout colour as a ``(channels,)`` tensor on ``device``, made once per device.

    Made per batch it is a blocking host-to-device copy: on CUDA that waits for the stream
    every step and takes away the host's lead over the GPU."""
    return torch.tensor(fill if len(fill) == channels else fill[:1] * channels, dtype=dtype, device=device)
