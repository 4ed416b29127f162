"""Build a model from checkpoint metadata alone and load its tensors strictly."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor, nn

from mgtool.archs import build_plain
from mgtool.checkpoint import CheckpointMeta, check_keys, read_meta, read_tensors
from mgtool.errors import MgtoolError, first_line
from mgtool.model import TemplateMixingNet


def build_model(meta: CheckpointMeta) -> nn.Module:
    """An uninitialised model of the checkpoint's kind, architecture and plan."""
    net = build_plain(meta.arch)
    if meta.kind == "plain":
        return net
    assert meta.plan is not None
    return TemplateMixingNet(net, meta.plan)


def expected_tensors(meta: CheckpointMeta) -> dict[str, Tensor]:
    """The model's state dict on the meta device: names and shapes, no memory, no init."""
    with torch.device("meta"):
        return build_model(meta).state_dict()


def stored_tensors(path: Path | str) -> dict[str, Tensor]:
    """The file's tensors as meta tensors of the stored shapes, read from the header only."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    except Exception as e:  # safetensors raises its own error types for every header problem
        raise MgtoolError(f"{path}: cannot read the tensor header ({first_line(e)})") from None


def check_against_header(meta: CheckpointMeta, path: Path | str) -> None:
    """Every size the metadata implies must match the tensors the file stores, before
    anything is allocated: a small header cannot make the loader build a huge model."""
    check_keys(expected_tensors(meta), stored_tensors(path), str(path))


def load_checkpoint(path: Path | str) -> tuple[nn.Module, CheckpointMeta]:
    """Validate the header (metadata against stored shapes), build the model, then load
    every tensor strictly."""
    meta = read_meta(path)
    check_against_header(meta, path)
    model = build_model(meta)
    tensors = read_tensors(path)
    check_keys(model.state_dict(), tensors, str(path))
    model.load_state_dict(tensors, strict=True)
    return model, meta


def load(path: Path | str) -> nn.Module:
    """A ready-to-run model (eval mode) from an mgtool checkpoint of either kind."""
    model, _ = load_checkpoint(path)
    return model.eval()
