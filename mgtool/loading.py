"""Build a model from checkpoint metadata alone and load its tensors strictly."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from mgtool.archs import build_plain
from mgtool.checkpoint import CheckpointMeta, check_keys, read_meta, read_tensors
from mgtool.model import TemplateMixingNet


def build_model(meta: CheckpointMeta) -> nn.Module:
    """An uninitialised model of the checkpoint's kind, architecture and plan."""
    net = build_plain(meta.arch)
    if meta.kind == "plain":
        return net
    assert meta.plan is not None
    return TemplateMixingNet(net, meta.plan)


def load_checkpoint(path: Path | str) -> tuple[nn.Module, CheckpointMeta]:
    """Validate the header, build the model, then load every tensor strictly."""
    meta = read_meta(path)
    model = build_model(meta)
    tensors = read_tensors(path)
    check_keys(model.state_dict(), tensors, str(path))
    model.load_state_dict(tensors, strict=True)
    return model, meta


def load(path: Path | str) -> nn.Module:
    """A ready-to-run model (eval mode) from an mgtool checkpoint of either kind."""
    model, _ = load_checkpoint(path)
    return model.eval()
