"""Seeded random images for tests and smoke runs (never a stand-in for real data)."""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F

from mgtool.data.config import DataConfig
from mgtool.data.registry import Arrays, DatasetInfo, InMemoryDataset, check_split, register_dataset
from mgtool.errors import MgtoolError


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        dims = tuple(int(d) for d in str(text).lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise MgtoolError(f"synthetic: shape must be CxHxW such as 3x32x32, got {text!r}")
    return dims  # type: ignore[return-value]


SYNTHETIC_MAX_BYTES = 2**32  # uint8 images per split: random data for tests never needs more


@register_dataset
class Synthetic(InMemoryDataset):
    """A low-frequency pattern per class plus noise (so it is learnable)."""

    name = "synthetic"
    summary = "random tensors for tests and smoke runs only: --data-opt shape=3x32x32 classes=10"
    options = {"shape": "3x32x32", "classes": 10, "train_size": 512, "test_size": 256, "seed": 0,
               "crop_padding": 2, "flip": True, "cutout": 0}

    def info(self, cfg: DataConfig) -> DatasetInfo:
        o = cfg.options
        classes = int(o["classes"])
        if classes < 1 or int(o["train_size"]) < 1 or int(o["test_size"]) < 1:
            raise MgtoolError("synthetic: classes, train_size and test_size must be positive")
        shape = parse_shape(o["shape"])  # bounded before anything is allocated
        if max(int(o["train_size"]), int(o["test_size"])) * math.prod(shape) > SYNTHETIC_MAX_BYTES:
            raise MgtoolError(f"synthetic: train_size/test_size of {shape} images exceed "
                              f"{SYNTHETIC_MAX_BYTES / 2**30:g} GiB per split; use fewer or smaller images")
        return DatasetInfo(self.name, shape, classes, int(o["train_size"]), int(o["test_size"]), True)

    def normalisation(self, cfg: DataConfig) -> tuple[tuple[float, ...], tuple[float, ...]]:
        c = parse_shape(cfg.options["shape"])[0]
        return (0.5,) * c, (0.25,) * c

    def arrays(self, cfg: DataConfig, split: str) -> Arrays:
        split = check_split(self.name, split)
        info = self.info(cfg)
        size = info.train_size if split == "train" else info.test_size
        assert size is not None
        return synthetic_arrays(info.shape, info.num_classes, size, int(cfg.options["seed"]), split)


@lru_cache(maxsize=8)
def synthetic_arrays(shape: tuple[int, int, int], classes: int, size: int, seed: int, split: str) -> Arrays:
    c, h, w = shape
    patterns = torch.rand(classes, c, 4, 4, generator=torch.Generator().manual_seed(seed))
    patterns = F.interpolate(patterns, size=(h, w), mode="bilinear", align_corners=False)
    gen = torch.Generator().manual_seed(seed * 2 + (1 if split == "train" else 2))
    labels = torch.randint(0, classes, (size,), generator=gen)
    noise = torch.rand(size, c, h, w, generator=gen)
    images = (0.6 * patterns[labels] + 0.4 * noise).mul(255).round().clamp(0, 255).to(torch.uint8)
    return Arrays(images, labels)
