"""What a data set's files looked like, so that a resumed run can tell they changed.

Small data sets (the usual case: MNIST, CIFAR) are hashed; a large one (an ImageNet folder)
is recorded by each file's size and modification time, which costs one ``stat`` per file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mgtool.data.config import DataConfig
from mgtool.data.registry import get_dataset, resolve_config

HASH_LIMIT = 512 * 2**20  # bytes of data hashed at most; above it, size and mtime
FILES_SHOWN = 3


def data_fingerprint(cfg: DataConfig) -> dict[str, str]:
    """``{file: sha256 or "size=N mtime_ns=T"}`` of every file ``cfg`` reads, each named relative
    to the data set's folder (a moved folder with the same files is the same data); {} for
    generated data."""
    cfg = resolve_config(cfg)
    dataset = get_dataset(cfg.name)
    folder = dataset.locate(cfg)
    stats = {p: p.stat() for p in dataset.data_files(cfg)}
    hashed = sum(s.st_size for s in stats.values()) <= HASH_LIMIT
    return {_name(p, folder): _sha256(p) if hashed else f"size={s.st_size} mtime_ns={s.st_mtime_ns}"
            for p, s in stats.items()}


def _name(path: Path, folder: Path | None) -> str:
    try:
        return str(path.relative_to(folder)) if folder is not None else str(path)
    except ValueError:
        return str(path)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def changed_files(saved: dict[str, str], now: dict[str, str]) -> list[str]:
    """The files added, removed or changed between two fingerprints, sorted."""
    return sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))


def describe_changes(changed: list[str]) -> str:
    more = f" and {len(changed) - FILES_SHOWN} more" if len(changed) > FILES_SHOWN else ""
    return ", ".join(changed[:FILES_SHOWN]) + more
