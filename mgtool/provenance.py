"""Where a checkpoint came from: mgtool version, command line, parents' hashes, time.

``lineage`` carries one record per ancestor (oldest first), copied from each parent's own
header when the file is written, so that a model card can be made from one file's
metadata alone. ``source`` names a pretrained model a converted file started from.
"""

from __future__ import annotations

import hashlib
import json
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
    lineage: tuple[dict[str, Any], ...] = field(default_factory=tuple)
    source: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {
            "mgtool_version": self.mgtool_version,
            "command": list(self.command),
            "created_utc": self.created_utc,
            "parents": [p.to_dict() for p in self.parents],
        }
        if self.lineage:
            out["lineage"] = [dict(r) for r in self.lineage]
        if self.source is not None:
            out["source"] = dict(self.source)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> Provenance:
        if not isinstance(data, dict):
            raise TypeError("provenance must be a JSON object")
        unknown = set(data) - {"mgtool_version", "command", "created_utc", "parents", "lineage", "source"}
        if unknown:
            raise KeyError(f"provenance has unknown keys {sorted(unknown)}")
        parents = []
        for p in data.get("parents", []):
            if set(p) - {"path", "sha256", "role", "training_flops"}:
                raise KeyError(f"provenance parent has unknown keys {sorted(p)}")
            parents.append(Parent(str(p["path"]), str(p["sha256"]), str(p.get("role", "input")),
                                  float(p.get("training_flops", 0.0))))
        lineage = data.get("lineage", [])
        source = data.get("source")
        if not isinstance(lineage, list) or not all(isinstance(r, dict) for r in lineage):
            raise TypeError("provenance lineage must be a list of JSON objects")
        if source is not None and not isinstance(source, dict):
            raise TypeError("provenance source must be a JSON object")
        return cls(str(data["mgtool_version"]), tuple(str(a) for a in data.get("command", [])),
                   str(data["created_utc"]), tuple(parents), tuple(lineage), source)


def sha256_file(path: Path | str, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while block := f.read(chunk):
                digest.update(block)
    except OSError as e:
        raise MgtoolError(f"{path}: cannot read ({e.strerror})") from None
    return digest.hexdigest()


def new_provenance(parents: tuple[Parent, ...] = (), command: list[str] | None = None,
                   source: dict[str, Any] | None = None) -> Provenance:
    from mgtool import __version__

    argv = list(sys.argv) if command is None else command
    if argv:
        argv[0] = Path(argv[0]).name
    now = datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return Provenance(__version__, tuple(argv), now, tuple(parents), inherited_lineage(parents), source)


def inherited_lineage(parents: tuple[Parent, ...]) -> tuple[dict[str, Any], ...]:
    """Every ancestor's record, oldest first, each once: the parents' own lineages, then the parents."""
    records: dict[str, dict[str, Any]] = {}
    for parent in parents:
        header = _mgtool_header(parent.path)
        if header is None:
            continue  # not an mgtool file (a foreign checkpoint): its hash is in ``parents``
        prov = _obj(header.get("provenance"))
        for record in prov.get("lineage") or []:
            if isinstance(record, dict):
                records.setdefault(str(record.get("sha256")), record)
        records.setdefault(parent.sha256, stage_record(parent, header))
    return tuple(records.values())


def stage_record(parent: Parent, header: dict[str, Any]) -> dict[str, Any]:
    """What a model card needs to know about one ancestor, from its header."""
    prov, training = _obj(header.get("provenance")), _obj(header.get("training"))
    command = [str(a) for a in prov.get("command") or []]
    stage = stage_of(training, command, str(header.get("kind")))
    record = {
        "sha256": parent.sha256, "path": parent.path, "role": parent.role, "stage": stage, "command": command,
        "parents": [str(_obj(p).get("sha256")) for p in prov.get("parents") or []],
        "created_utc": prov.get("created_utc"), "mgtool_version": prov.get("mgtool_version"),
        "kind": header.get("kind"), "arch": header.get("arch"), "training_flops": _obj(header.get("flops")).get(
            "training", 0.0), "data": _obj(header.get("data")).get("name"),
    }
    for key in ("epochs_done", "test_top1", "test_top5", "growth"):
        if key in training:
            record[key] = training[key]
    if prov.get("source") is not None:
        record["source"] = prov["source"]
    return record


def stage_of(training: dict[str, Any] | None, command: list[str] | tuple[str, ...], kind: str) -> str:
    """A file's stage: ``recalibrate-bn``, its training command, ``fuse`` for a fused file, else mgtool's
    subcommand, else its kind."""
    training = _obj(training)
    if "recalibrated_bn" in training:  # recalibrate-bn keeps its input's training summary
        return "recalibrate-bn"
    if training.get("command"):
        return str(training["command"])
    if "growth" in training:
        return "fuse"
    if len(command) > 1 and Path(command[0]).name.startswith("mgtool"):
        return str(command[1])
    return kind


def _obj(value: Any) -> dict[str, Any]:
    """A header section as a dict ({} for anything else): free-form sections are not type-checked on read."""
    return value if isinstance(value, dict) else {}


def _mgtool_header(path: str) -> dict[str, Any] | None:
    """The parent's ``mgtool`` JSON document, or None for a file without one."""
    from safetensors import safe_open

    if not str(path).endswith(".safetensors"):
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("mgtool")
        header = json.loads(raw) if raw else None
        return header if isinstance(header, dict) else None
    except Exception:  # a parent was read and validated by its stage already; the card makes do without it
        return None
