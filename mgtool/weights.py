"""Reading other people's checkpoints: formats, nesting and key prefixes."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mgtool.checkpoint import check_finite, read_raw_metadata, read_tensors
from mgtool.errors import MgtoolError, first_line
from mgtool.safe_write import check_input_file

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
    except pickle.UnpicklingError as e:
        if "global" in str(e).lower():  # weights_only refused a class: a pickled object, not tensors
            raise MgtoolError(f"{path}: holds a pickled Python object (e.g. a whole module saved with "
                              "torch.save(model)), which mgtool does not unpickle; save the weights "
                              "instead: torch.save(model.state_dict(), 'weights.pth')") from None
        raise MgtoolError(f"{path}: cannot read with torch.load(weights_only=True) ({first_line(e)}); "
                          f"{remedy}") from None
    except (zipfile.BadZipFile, EOFError, RuntimeError, OSError) as e:
        raise MgtoolError(f"{path}: cannot read with torch.load(weights_only=True) ({first_line(e)}); "
                          f"{remedy}") from None


def read_plain_weights(path: Path | str) -> dict[str, Tensor]:
    """A state dict from ``.safetensors`` or ``.pt``/``.pth`` (``weights_only=True``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        read_raw_metadata(path)  # validates the header with a clear error first
        sd: Any = read_tensors(path)
    else:
        check_input_file(path, "a checkpoint file")
        sd = torch_load(path, "is it truncated, or not a checkpoint?")
    if not isinstance(sd, dict):
        raise MgtoolError(f"{path}: holds a {type(sd).__name__}, not a state dict")
    try:
        tensors = normalise_state_dict(sd)
    except MgtoolError as e:
        raise MgtoolError(f"{path}: {e}") from None
    check_backed(tensors, path)
    check_finite(tensors, path)  # a NaN running_var is named here, not as "logits differ by nan" later
    return tensors


def check_backed(tensors: dict[str, Tensor], where: Path | str) -> None:
    """Refuse tensors that claim more values than their memory holds (expanded, stride-0
    views): a few KB of file must not make shapes that drive later work."""
    for key, value in tensors.items():
        odd = ("nested" if value.is_nested else "sparse" if value.layout != torch.strided else
               "quantized" if value.is_quantized else "meta" if value.is_meta else None)
        if odd is not None:
            raise MgtoolError(f"{where}: tensor {key} is a {odd} tensor; mgtool reads dense tensors with real "
                              "values: save t.to_dense() / t.dequantize() instead")
        needed = value.numel() * value.element_size()
        if needed and value.untyped_storage().nbytes() < needed:
            raise MgtoolError(f"{where}: tensor {key} of shape {tuple(value.shape)} is backed by only "
                              f"{value.untyped_storage().nbytes()} bytes (an expanded or strided view?); "
                              "save real tensors, e.g. {k: v.contiguous() for k, v in sd.items()}")
