"""The architecture spec stored in every checkpoint."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from mgtool.errors import MgtoolError


@dataclass(frozen=True)
class ArchSpec:
    """What a later stage needs to rebuild a model: family name, width and options.

    ``width`` is the family's width multiplier (for ``wrn`` the widen factor k).
    Growing by g multiplies every hidden dimension by g (see each family's ``grow``).
    """

    name: str
    width: float
    num_classes: int
    in_chans: int = 3
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "width": self.width,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "options": dict(self.options),
        }

    @classmethod
    def from_dict(cls, data: Any) -> ArchSpec:
        if not isinstance(data, dict):
            raise MgtoolError(f"architecture spec must be a JSON object, got {type(data).__name__}")
        allowed = {"name", "width", "num_classes", "in_chans", "options"}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise MgtoolError(f"architecture spec has unknown keys {unknown}")
        missing = sorted({"name", "width", "num_classes"} - set(data))
        if missing:
            raise MgtoolError(f"architecture spec lacks keys {missing}")
        spec = cls(
            name=str(data["name"]),
            width=float(data["width"]),
            num_classes=int(data["num_classes"]),
            in_chans=int(data.get("in_chans", 3)),
            options=dict(data.get("options", {})),
        )
        # Bounded at read time: a crafted width or class count must not drive the model builder.
        if not (math.isfinite(spec.width) and 0 < spec.width <= 1e4):
            raise MgtoolError(f"architecture width must be a finite number in (0, 10000], got {spec.width}")
        if not (1 <= spec.num_classes <= 2**24 and 1 <= spec.in_chans <= 2**16):
            raise MgtoolError(f"architecture has {spec.num_classes} classes and {spec.in_chans} input channels; "
                              "both must be at least 1 (and below 2**24 and 2**16)")
        return spec

    def describe(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in sorted(self.options.items()))
        base = f"{self.name} width={self.width:g} classes={self.num_classes} in_chans={self.in_chans}"
        return f"{base} ({opts})" if opts else base

    def key(self) -> str:
        """A canonical string: two specs are the same architecture iff their keys are equal."""
        return json.dumps(self.to_dict(), sort_keys=True)
