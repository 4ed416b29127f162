"""Check a resume state against the live model and optimizer before any of it is used.

A resume state is a file: ``torch.load(weights_only=True)`` makes reading it safe, but not
what it holds. The fused SGD/AdamW kernels trust every buffer's shape, dtype and device, so
a crafted ``momentum_buffer`` of the wrong size writes out of bounds. Everything is checked
here, first by structure (before ``load_state_dict``), then by what the optimizer will see
(after it, since loading casts dtypes and moves devices).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mgtool.errors import MgtoolError

# Per-parameter optimizer buffers that must match their parameter exactly.
BUFFERS = {"momentum_buffer", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
REMEDY = "delete it and start over with --force"


def _bad(where: Path, what: str) -> MgtoolError:
    return MgtoolError(f"{where}: the resume state is damaged ({what}); {REMEDY}")


def check_structure(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
                    where: Path) -> None:
    """Refuse anything in ``state`` that does not fit ``model`` and ``optimizer``."""
    _check_model(state.get("model"), model, where)
    _check_optimizer(state.get("optimizer"), optimizer, where)
    _check_rng(state.get("rng"), where)
    for key in ("epoch", "step", "samples_seen", "world"):
        value = state.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**53:
            raise _bad(where, f"{key} is {type(value).__name__} {str(value)[:40]!r}, not a count")
    metrics = state.get("metrics")
    if not isinstance(metrics, list) or not all(isinstance(r, dict) for r in metrics):
        raise _bad(where, "metrics is not a list of records")


def saved_fingerprint(state: dict[str, Any], where: Path) -> dict[str, Any]:
    """The training fingerprint stored in ``state``, parsed."""
    value = state.get("fingerprint")
    if not isinstance(value, str) or len(value) > 1_000_000:
        raise _bad(where, "its fingerprint is not a JSON string")
    try:
        parsed = json.loads(value)
    except (json.JSONDecodeError, RecursionError):
        parsed = None
    if not isinstance(parsed, dict):
        raise _bad(where, "its fingerprint is not a JSON object")
    return parsed


def _check_model(saved: Any, model: nn.Module, where: Path) -> None:
    if not isinstance(saved, dict):
        raise _bad(where, "model is not a dict of tensors")
    own = model.state_dict()
    if set(saved) != set(own):
        odd = sorted(set(saved) ^ set(own), key=str)[:3]
        raise _bad(where, f"model keys differ from this model's: {odd}")
    for key, value in own.items():
        _same_tensor(saved[key], value, f"model tensor {key}", where, device=False)


def _check_optimizer(saved: Any, optimizer: torch.optim.Optimizer, where: Path) -> None:
    if not isinstance(saved, dict) or set(saved) != {"state", "param_groups"}:
        raise _bad(where, "optimizer is not an optimizer state dict")
    groups, per_param = saved["param_groups"], saved["state"]
    if not isinstance(groups, list) or len(groups) != len(optimizer.param_groups):
        raise _bad(where, f"optimizer has {len(groups) if isinstance(groups, list) else 'no'} parameter groups, "
                          f"this run {len(optimizer.param_groups)}")
    params: dict[Any, Tensor] = {}
    for i, (mine, theirs) in enumerate(zip(optimizer.param_groups, groups, strict=True)):
        if not isinstance(theirs, dict) or set(theirs) != set(mine):
            raise _bad(where, f"optimizer parameter group {i} has other settings than this run's")
        ids = theirs["params"]
        if not isinstance(ids, list) or len(ids) != len(mine["params"]):
            raise _bad(where, f"optimizer parameter group {i} has another number of parameters")
        for key, value in theirs.items():
            if key != "params" and not _same_kind(value, mine[key]):
                raise _bad(where, f"optimizer setting {key} of group {i} is {str(value)[:40]!r}")
        params.update(zip(ids, mine["params"], strict=True))
    if not isinstance(per_param, dict) or not set(per_param) <= set(params):
        raise _bad(where, "optimizer state names parameters this run does not have")
    for pid, buffers in per_param.items():
        if not isinstance(buffers, dict):
            raise _bad(where, f"optimizer state of parameter {pid} is not a dict")
        for name, value in buffers.items():
            _check_buffer(name, value, params[pid], f"optimizer {name} of parameter {pid}", where, device=False)


def _same_kind(value: Any, like: Any) -> bool:
    """A saved hyper-parameter may replace the live one: same type, finite numbers."""
    if isinstance(like, bool) or like is None or isinstance(like, str):
        return type(value) is type(like) or value == like
    if isinstance(like, (int, float)):
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if isinstance(like, (tuple, list)):
        return (isinstance(value, (tuple, list)) and len(value) == len(like)
                and all(_same_kind(v, w) for v, w in zip(value, like, strict=True)))
    return False


def _check_buffer(name: str, value: Any, param: Tensor, label: str, where: Path, *, device: bool) -> None:
    if name == "step":
        ok = (isinstance(value, Tensor) and value.numel() == 1 and value.is_floating_point()
              and not value.is_sparse and bool(torch.isfinite(value).all()) and float(value) >= 0)
        if not ok:
            raise _bad(where, f"{label} is not a step count")
        return
    if name == "momentum_buffer" and value is None:
        return
    if name not in BUFFERS:
        raise _bad(where, f"{label} is not a buffer this optimizer keeps")
    _same_tensor(value, param, label, where, device=device)


def _same_tensor(value: Any, like: Tensor, label: str, where: Path, *, device: bool) -> None:
    if not isinstance(value, Tensor) or value.layout != torch.strided or value.is_quantized or value.is_meta:
        raise _bad(where, f"{label} is a {type(value).__name__}, not a dense tensor")
    if tuple(value.shape) != tuple(like.shape):
        raise _bad(where, f"{label} has shape {tuple(value.shape)}, its parameter {tuple(like.shape)}")
    if value.dtype != like.dtype and not (value.is_floating_point() and like.is_floating_point()):
        raise _bad(where, f"{label} is {value.dtype}, its parameter {like.dtype}")
    if device and (value.dtype != like.dtype or value.device != like.device):
        raise _bad(where, f"{label} is {value.dtype} on {value.device}, its parameter {like.dtype} on {like.device}")
    if value.untyped_storage().nbytes() < value.numel() * value.element_size():
        raise _bad(where, f"{label} is not backed by its memory")
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        raise _bad(where, f"{label} holds NaN/Inf")


def check_loaded(optimizer: torch.optim.Optimizer, where: Path) -> None:
    """After ``load_state_dict``: every buffer has its parameter's shape, dtype and device,
    exactly what the fused kernels assume."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            for name, value in optimizer.state.get(param, {}).items():
                if name == "step":
                    _check_buffer(name, value, param, f"optimizer {name}", where, device=False)
                elif value is not None:
                    _same_tensor(value, param, f"optimizer {name}", where, device=True)


def _check_rng(rng: Any, where: Path) -> None:
    if not isinstance(rng, list) or not rng:
        raise _bad(where, "rng is not a list of per-process states")
    size = torch.get_rng_state().shape
    for i, entry in enumerate(rng):
        if not isinstance(entry, dict) or set(entry) - {"torch", "cuda"} or "torch" not in entry:
            raise _bad(where, f"rng entry {i} is not an RNG state")
        states = [entry["torch"], *(entry.get("cuda") or [])]
        if "cuda" in entry and not isinstance(entry["cuda"], list):
            raise _bad(where, f"rng entry {i} has a junk cuda state")
        for s in states:
            if not isinstance(s, Tensor) or s.dtype != torch.uint8 or s.ndim != 1 or s.layout != torch.strided:
                raise _bad(where, f"rng entry {i} is not a byte tensor")
        if entry["torch"].shape != size:
            raise _bad(where, f"rng entry {i} has {entry['torch'].numel()} bytes, a CPU generator {size[0]}")


def saved_files(state: dict[str, Any], where: Path) -> dict[str, str] | None:
    """The data fingerprint stored in ``state`` (None: a state from before it was stored)."""
    files = state.get("data_files")
    if files is None:
        return None
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise _bad(where, "data_files is not a map of file names to fingerprints")
    return files
