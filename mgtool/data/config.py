"""``DataConfig``: which data set, where, with which options (stored in checkpoint metadata)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from mgtool.errors import MgtoolError

_KEYS = {"name", "data_dir", "options"}


@dataclass(frozen=True)
class DataConfig:
    """A data set by registry name, its folder (None: the default search path) and options.

    ``download`` is a per-run request and is not stored in checkpoints.
    """

    name: str
    data_dir: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    download: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "data_dir": self.data_dir, "options": dict(self.options)}

    @classmethod
    def from_dict(cls, data: Any) -> DataConfig:
        if not isinstance(data, dict):
            raise MgtoolError(f"data settings must be a JSON object, got {type(data).__name__}")
        unknown = sorted(set(data) - _KEYS)
        if unknown:
            raise MgtoolError(f"data settings have unknown keys {unknown}")
        if "name" not in data:
            raise MgtoolError("data settings lack the data set name")
        data_dir = data.get("data_dir")
        return cls(str(data["name"]), None if data_dir is None else str(data_dir),
                   dict(data.get("options") or {}))

    @classmethod
    def from_meta(cls, data: dict[str, Any] | None) -> DataConfig | None:
        return None if data is None else cls.from_dict(data)

    def key(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)
