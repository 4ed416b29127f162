"""CIFAR-style Wide ResNet (Zagoruyko & Komodakis), pre-activation blocks.

Options: ``depth`` (6n+4), ``stem_width`` (16 in the original; growth scales it too,
so a grown WRN-28-10 made from two WRN-28-5 has a 32-channel stem), ``norm``
(``standard``: BN-ReLU-conv-BN-ReLU-conv; ``block-input``: BatchNorm only before each
block, BN-ReLU-conv-ReLU-conv, the setting of the paper and GradMax) and ``dropout``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from mgtool.archs.registry import Family, check_option, register_family, scaled
from mgtool.archs.spec import ArchSpec
from mgtool.errors import MgtoolError

NORM_MODES = ("standard", "block-input")


class WideBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, *, norm: str, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch) if norm == "standard" else nn.Identity()
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.dropout = dropout
        self.shortcut = (
            nn.Conv2d(in_ch, out_ch, 1, stride, 0, bias=False)
            if stride != 1 or in_ch != out_ch
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        o = F.relu(self.bn1(x))
        identity = x if self.shortcut is None else self.shortcut(o)
        y = F.relu(self.bn2(self.conv1(o)))
        if self.dropout > 0:
            y = F.dropout(y, self.dropout, self.training)
        return self.conv2(y) + identity


class WideResNet(nn.Module):
    def __init__(
        self,
        depth: int,
        widen: float,
        num_classes: int,
        *,
        in_chans: int = 3,
        stem_width: int = 16,
        norm: str = "standard",
        dropout: float = 0.0,
    ):
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise MgtoolError(f"wrn: depth must be 6n+4 (10, 16, 22, 28, 40, ...), got {depth}")
        check_option("wrn", "norm", norm, NORM_MODES)
        n = (depth - 4) // 6
        widths = [scaled(b, widen, f"wrn stage {i + 1}") for i, b in enumerate((16, 32, 64))]
        self.stem = nn.Conv2d(in_chans, stem_width, 3, 1, 1, bias=False)
        stages = []
        in_ch = stem_width
        for i, out_ch in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(WideBlock(in_ch, out_ch, stride, norm=norm, dropout=dropout))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.BatchNorm2d(in_ch)
        self.head = nn.Linear(in_ch, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(x))
        x = F.relu(self.norm(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.head(x)


def _build(spec: ArchSpec) -> nn.Module:
    o = spec.options
    return WideResNet(
        int(o["depth"]),
        spec.width,
        spec.num_classes,
        in_chans=spec.in_chans,
        stem_width=int(o["stem_width"]),
        norm=str(o["norm"]),
        dropout=float(o["dropout"]),
    )


def _grow(spec: ArchSpec, g: int) -> ArchSpec:
    options = {**spec.options, "stem_width": int(spec.options["stem_width"]) * g}
    return ArchSpec(spec.name, spec.width * g, spec.num_classes, spec.in_chans, options)


register_family(
    Family(
        name="wrn",
        build=_build,
        options={"depth": 28, "stem_width": 16, "norm": "standard", "dropout": 0.0},
        grow=_grow,
        input_size=lambda spec: (32, 32),
        summary="CIFAR Wide ResNet; width = widen factor k (WRN-28-10: --width 10)",
        tiny={"width": 0.5, "num_classes": 10, "options": {"depth": 10, "stem_width": 8}},
        cka_layers=lambda net: ["stem"] + [n for n, m in net.named_modules() if isinstance(m, WideBlock)],
    )
)
