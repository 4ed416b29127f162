"""timm's ResNet family at any width multiplier (width 1.0 is timm's own model).

Every channel count, stem included, is the timm default times ``width``; the
bottleneck ratio is kept. Key names are timm's (and torchvision's, which match).
"""

from __future__ import annotations

import timm
from torch import nn

from mgtool.archs.registry import Family, register_family, scaled
from mgtool.archs.spec import ArchSpec

_BASE_CHANNELS = (64, 128, 256, 512)


def timm_kwargs(spec: ArchSpec) -> dict:
    """The keyword arguments that make ``timm.create_model(spec.name, **kw)`` this model."""
    channels = tuple(scaled(c, spec.width, f"{spec.name} stage") for c in _BASE_CHANNELS)
    return {
        "channels": channels,
        "stem_width": scaled(64, spec.width, f"{spec.name} stem"),
        "num_classes": spec.num_classes,
        "in_chans": spec.in_chans,
    }


def _build(spec: ArchSpec) -> nn.Module:
    return timm.create_model(spec.name, pretrained=False, **timm_kwargs(spec))


def _grow(spec: ArchSpec, g: int) -> ArchSpec:
    return ArchSpec(spec.name, spec.width * g, spec.num_classes, spec.in_chans, dict(spec.options))


for _name in ("resnet18", "resnet34", "resnet50", "resnet101"):
    register_family(
        Family(
            name=_name,
            build=_build,
            options={},
            grow=_grow,
            input_size=lambda spec: (224, 224),
            summary=f"timm {_name}; width multiplies every channel count (1.0 = timm's model)",
        )
    )
