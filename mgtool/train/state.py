"""The resume sidecar: a ``torch.save`` dict of tensors and plain values only, so that
``torch.load(weights_only=True)`` reads it; written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mgtool.checkpoint import atomic_write
from mgtool.errors import MgtoolError
from mgtool.weights import torch_load

STATE_FORMAT = 1


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def save_state(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda tmp: torch.save({"format": STATE_FORMAT, **state}, tmp))


def load_state(path: Path) -> dict[str, Any]:
    state = torch_load(path, "the resume state is damaged: delete it and start over with --force")
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise MgtoolError(f"{path}: not an mgtool resume state of format {STATE_FORMAT}")
    return state
