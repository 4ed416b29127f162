"""How a family's nets and timm's models map onto each other (``Family.timm``).

``export --format timm-dir`` asks a family's bridge for timm's name and keyword arguments
(``timm_dir``), and a pretrained timm source is claimed by the one bridge whose ``from_timm``
returns a spec (``sources``); a family without a bridge is one timm cannot load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from mgtool.archs.spec import ArchSpec
from mgtool.errors import MgtoolError


@dataclass(frozen=True)
class TimmBridge:
    """A family's two directions to and from timm (one bridge may serve several families).

    to_timm: resolved spec -> (timm model name, keyword arguments) such that
    ``timm.create_model(name, **kwargs)`` is the family's plain net with the same keys; an
    ``MgtoolError`` (one line) where timm cannot express the spec.
    from_timm: (timm model, its architecture name, its config's ``model_args``) -> the mgtool
    spec; None when the model is not of this bridge's kind, an ``MgtoolError`` when it is but
    the family cannot express it.
    reads: the timm models ``from_timm`` takes, as refusals name them.
    fixed_input_size: the net takes only its family's ``input_size`` (a ViT's pos_embed fixes
    it), so a timm folder records that size, not the data set's.
    """

    to_timm: Callable[[ArchSpec], tuple[str, dict[str, Any]]]
    from_timm: Callable[[nn.Module, str, dict[str, Any]], ArchSpec | None]
    reads: str
    fixed_input_size: bool = False


def check_model_args(family: str, model_args: dict[str, Any], allowed: dict[str, Any]) -> None:
    """Refuse ``model_args`` a family does not map (``allowed``: key -> the one value it takes, or None)."""
    for key, value in model_args.items():
        want = allowed.get(key, ...)
        if want is ... or (want is not None and value != want):
            shown = f"{key}={value!r}"
            raise MgtoolError(f"model_args {shown} cannot be mapped to mgtool's {family} family (it maps "
                              f"{', '.join(sorted(allowed))}, with global_pool={allowed['global_pool']!r})")
