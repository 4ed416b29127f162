"""Tiny networks for tests and smoke runs (seconds on a CPU)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mgtool.archs.registry import Family, register_family, scaled
from mgtool.archs.spec import ArchSpec


class TinyCNN(nn.Module):
    """conv-BN-ReLU x3 (the last two share a shape, so they share a bank), pool, linear."""

    def __init__(self, width: float, num_classes: int, in_chans: int):
        super().__init__()
        c = scaled(8, width, "tiny-cnn")
        self.conv1 = nn.Conv2d(in_chans, c, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 2, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 3, 1, 1, bias=True)
        self.bn3 = nn.BatchNorm2d(c)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.relu(self.bn3(self.conv3(x)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


class TinyMLP(nn.Module):
    """Flatten, three hidden Linear+ReLU layers (two of one shape), a Linear head."""

    def __init__(self, width: float, num_classes: int, in_chans: int, image_size: int):
        super().__init__()
        h = scaled(16, width, "tiny-mlp")
        self.fc1 = nn.Linear(in_chans * image_size * image_size, h)
        self.fc2 = nn.Linear(h, h)
        self.fc3 = nn.Linear(h, h)
        self.head = nn.Linear(h, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        x = F.relu(self.fc3(x))
        return self.head(x)


def _grow(spec: ArchSpec, g: int) -> ArchSpec:
    return ArchSpec(spec.name, spec.width * g, spec.num_classes, spec.in_chans, dict(spec.options))


register_family(
    Family(
        name="tiny-cnn",
        build=lambda s: TinyCNN(s.width, s.num_classes, s.in_chans),
        options={},
        grow=_grow,
        input_size=lambda spec: (16, 16),
        summary="3-conv CNN with 8*width channels, for tests",
        tiny={"width": 1.0, "num_classes": 5},
    )
)
register_family(
    Family(
        name="tiny-mlp",
        build=lambda s: TinyMLP(s.width, s.num_classes, s.in_chans, int(s.options["image_size"])),
        options={"image_size": 8},
        grow=_grow,
        input_size=lambda spec: (int(spec.options["image_size"]),) * 2,
        summary="4-layer MLP with 16*width hidden units, for tests",
        tiny={"width": 1.0, "num_classes": 4, "in_chans": 1},
    )
)
