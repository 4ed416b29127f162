"""Where a checkpoint came from: mgtool version, command line, parents' hashes, time."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mgtool.errors import MgtoolError


@dataclass(frozen=True)
class Parent:
    path: str
    sha256: str
    role: str = "input"  # "input", or "given" for net 1 (excluded from FLOPs Norm)
    training_flops: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "role": self.role,
                "training_flops": self.training_flops}


@dataclass(frozen=True)
class Provenance:
    mgtool_version: str
    command: tuple[str, ...]
    created_utc: str
    parents: tuple[Parent, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mgtool_version": self.mgtool_version,
            "command": list(self.command),
            "created_utc": self.created_utc,
            "parents": [p.to_dict() for p in self.parents],
        }

    @classmethod
    def from_dict(cls, data: Any) -> Provenance:
        if not isinstance(data, dict):
            raise TypeError("provenance must be a JSON object")
        unknown = set(data) - {"mgtool_version", "command", "created_utc", "parents"}
        if unknown:
            raise KeyError(f"provenance has unknown keys {sorted(unknown)}")
        parents = []
        for p in data.get("parents", []):
            if set(p) - {"path", "sha256", "role", "training_flops"}:
                raise KeyError(f"provenance parent has unknown keys {sorted(p)}")
            parents.append(Parent(str(p["path"]), str(p["sha256"]), str(p.get("role", "input")),
                                  float(p.get("training_flops", 0.0))))
        return cls(str(data["mgtool_version"]), tuple(str(a) for a in data.get("command", [])),
                   str(data["created_utc"]), tuple(parents))


def sha256_file(path: Path | str, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
    except OSError as e:
        raise MgtoolError(f"{path}: cannot read ({e.strerror})") from None
    return digest.hexdigest()


def new_provenance(parents: tuple[Parent, ...] = (), command: list[str] | None = None) -> Provenance:
    from mgtool import __version__

    argv = list(sys.argv) if command is None else command
    if argv:
        argv[0] = Path(argv[0]).name
    now = datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return Provenance(__version__, tuple(argv), now, tuple(parents))
