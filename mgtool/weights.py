"""Reading other people's checkpoints: formats, nesting and key prefixes."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mgtool.checkpoint import read_raw_metadata, read_tensors
from mgtool.errors import MgtoolError, first_line

NESTED_KEYS = ("state_dict", "model", "model_state_dict")
PREFIXES = ("module.", "_orig_mod.")


def normalise_state_dict(sd: dict[str, Any]) -> dict[str, Tensor]:
    """Unwrap ``state_dict``/``model``/``model_state_dict`` nesting and strip the
    ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes; keep tensors only."""
    for key in NESTED_KEYS:
        if key in sd and isinstance(sd[key], dict):
            sd = sd[key]
            break
    out: dict[str, Tensor] = {}
    for key, value in sd.items():
        if not isinstance(value, Tensor):
            continue
        name = key
        stripped = True
        while stripped:
            stripped = False
            for prefix in PREFIXES:
                if name.startswith(prefix):
                    name = name[len(prefix):]
                    stripped = True
        if name in out:
            raise MgtoolError(f"two keys map to {name!r} after stripping prefixes {PREFIXES}")
        out[name] = value
    if not out:
        raise MgtoolError("the checkpoint holds no tensors (looked at the top level and under "
                          f"{', '.join(NESTED_KEYS)})")
    return out


def torch_load(path: Path, remedy: str) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; unreadable files get a one-line error."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, RuntimeError, OSError) as e:
        raise MgtoolError(f"{path}: cannot read with torch.load(weights_only=True) ({first_line(e)}); "
                          f"{remedy}") from None


def read_plain_weights(path: Path | str) -> dict[str, Tensor]:
    """A state dict from ``.safetensors`` or ``.pt``/``.pth`` (``weights_only=True``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        read_raw_metadata(path)  # validates the header with a clear error first
        sd: Any = read_tensors(path)
    else:
        if not path.exists():
            raise MgtoolError(f"{path}: no such file")
        sd = torch_load(path, "is it truncated, or not a checkpoint?")
    if not isinstance(sd, dict):
        raise MgtoolError(f"{path}: holds a {type(sd).__name__}, not a state dict")
    try:
        return normalise_state_dict(sd)
    except MgtoolError as e:
        raise MgtoolError(f"{path}: {e}") from None
