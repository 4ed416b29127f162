"""timm's ResNet family at any width multiplier (width 1.0 is timm's own model).

Every stage's channel count is the timm default times ``width``; the bottleneck ratio
is kept. Key names are timm's (and torchvision's, which match).

timm's plain 7x7 stem is 64 channels at every width (its ``stem_width`` only acts on
deep stems). Option ``stem``: ``scaled`` (default) makes the stem ``64 * width`` channels,
so that growing by g grows every hidden layer, stem included (what ``fuse`` needs);
``timm`` keeps timm's stem, so that a plain file loads into
``timm.create_model(name, **timm_kwargs(spec))`` at any width. At width 1.0 both are
timm's own model.
"""

from __future__ import annotations

import re

import timm
from timm.models.resnet import ResNet
from torch import nn

from mgtool.archs.registry import Family, check_option, register_family, resolve_spec, scaled
from mgtool.archs.spec import ArchSpec
from mgtool.archs.timm_bridge import TimmBridge, check_model_args
from mgtool.errors import MgtoolError

NAMES = ("resnet18", "resnet34", "resnet50", "resnet101")
_BASE_CHANNELS = (64, 128, 256, 512)
# model_args the family expresses (the value must equal the one given where there is one).
TIMM_ARGS = {"channels": None, "num_classes": None, "in_chans": None, "global_pool": "avg",
             "stem_width": None, "drop_rate": None, "zero_init_last": None}


def timm_kwargs(spec: ArchSpec) -> dict:
    """The keyword arguments that make ``timm.create_model(spec.name, **kw)`` this model
    (with ``stem=timm``, or at width 1.0)."""
    channels = tuple(scaled(c, spec.width, f"{spec.name} stage") for c in _BASE_CHANNELS)
    return {
        "channels": channels,
        "stem_width": scaled(64, spec.width, f"{spec.name} stem"),
        "num_classes": spec.num_classes,
        "in_chans": spec.in_chans,
    }


STEM_MODES = ("timm", "scaled")


def _build(spec: ArchSpec) -> nn.Module:
    kwargs = timm_kwargs(spec)
    model = timm.create_model(spec.name, pretrained=False, **kwargs)
    stem = str(spec.options.get("stem", "scaled"))
    check_option(spec.name, "stem", stem, STEM_MODES)
    if stem == "scaled" and kwargs["stem_width"] != model.conv1.out_channels:
        _rescale_stem(model, kwargs["stem_width"])
    return model


def _rescale_stem(model: nn.Module, width: int) -> None:
    """Give timm's plain stem ``width`` channels: conv1, bn1 and the convs reading them."""
    old = model.conv1
    model.conv1 = _conv_like(old, old.in_channels, width)
    model.bn1 = type(model.bn1)(width)
    block = model.layer1[0]
    block.conv1 = _conv_like(block.conv1, width, block.conv1.out_channels)
    if block.downsample is not None:
        conv = next(m for m in block.downsample if isinstance(m, nn.Conv2d))
        if conv.out_channels == width and conv.stride == (1, 1):
            block.downsample = None  # timm builds no projection when the widths agree
        else:
            index = next(i for i, m in enumerate(block.downsample) if m is conv)
            block.downsample[index] = _conv_like(conv, width, conv.out_channels)
    model.feature_info[0]["num_chs"] = width


def _conv_like(conv: nn.Conv2d, in_ch: int, out_ch: int) -> nn.Conv2d:
    new = nn.Conv2d(in_ch, out_ch, conv.kernel_size, conv.stride, conv.padding,
                    bias=conv.bias is not None)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")  # timm's init
    return new


def _grow(spec: ArchSpec, g: int) -> ArchSpec:
    return ArchSpec(spec.name, spec.width * g, spec.num_classes, spec.in_chans, dict(spec.options))


def _block_outputs(net: nn.Module) -> list[str]:
    """The stem's output ``act1`` and every residual block's output (``layer<s>.<b>``)."""
    return ["act1"] + [n for n, _ in net.named_modules() if re.fullmatch(r"layer\d+\.\d+", n)]


def _to_timm(spec: ArchSpec) -> tuple[str, dict]:
    kwargs = timm_kwargs(spec)
    if spec.options.get("stem") != "timm" and kwargs["stem_width"] != 64:
        raise MgtoolError(
            f"{spec.describe()} has a {kwargs['stem_width']}-channel stem, which timm's ResNet cannot express "
            "(its plain stem is fixed at 64 channels); export it as an mgtool file instead "
            "(mgtool export SRC -o OUT.safetensors, then mgtool.load), or grow to width 1.0 "
            "(e.g. fuse two width-0.5 nets)")
    kwargs.pop("stem_width")  # timm ignores it for the plain stem; it would only mislead a reader
    return spec.name, kwargs


def _from_timm(model: nn.Module, architecture: str, model_args: dict) -> ArchSpec | None:
    if not (isinstance(model, ResNet) and architecture in NAMES):
        return None
    check_model_args(architecture, model_args, TIMM_ARGS)
    planes = tuple(getattr(model, f"layer{i + 1}")[0].conv1.out_channels for i in range(4))
    width = planes[0] / 64  # timm's first stage: 64 channels at width 1
    same = isinstance(model.conv1, nn.Conv2d)  # timm's plain 7x7 stem, not a deep one
    if same:
        stem = "timm" if model.conv1.out_channels == 64 and width != 1.0 else "scaled"
        spec = resolve_spec(ArchSpec(architecture, width, model.num_classes, model.conv1.in_channels,
                                     {"stem": stem}))
        try:
            same = timm_kwargs(spec)["channels"] == planes
        except MgtoolError:  # a width that gives fractional channels
            same = False
    if not same:
        raise MgtoolError(f"{architecture}: stage widths {list(planes)} (or its stem) are not timm's (64, 128, 256, "
                          "512) times one width; mgtool's resnet families cannot express it")
    return spec


TIMM = TimmBridge(_to_timm, _from_timm, reads="resnet18/34/50/101")

for _name in NAMES:
    register_family(
        Family(
            name=_name,
            build=_build,
            options={"stem": "scaled"},
            grow=_grow,
            input_size=lambda spec: (224, 224),
            summary=f"timm {_name}; width multiplies every channel count, stem included (1.0 = timm's "
            "model); stem=timm keeps timm's 64-channel stem at every width (cannot be fused)",
            tiny={"width": 0.0625, "num_classes": 7},
            cka_layers=_block_outputs,
            timm=TIMM,
        )
    )
