"""A ledger of fingerprinted stages in one folder: skip, resume or rerun; own files; one process.

``DIR/<ledger>.json`` records, per stage, its fingerprint (the sha256 of the stage's name,
its resolved configuration and its input files' sha256), its output, the output's sha256
and its status (``running`` or ``done``); and every file in DIR the runner wrote, with
its sha256 when known.

* **skip**: the stage is done with the same fingerprint and its output still has the
  recorded sha256;
* **resume**: a resumable stage is ``running`` with the same fingerprint and its resume
  state is there;
* **rerun**: anything else. A stage replaces only files the runner owns (wrote, and that
  were not changed since); any other file, and a ledger the runner did not write, is
  left alone unless ``force``.

One process at a time per folder: the ledger holds an ``fcntl`` lock on
``DIR/.<ledger>.lock``, which the kernel releases when the process ends (so a killed run
never leaves a stale lock). Temporary files a killed atomic write left beside an owned
file (``.NAME.*.tmp``) are removed when the ledger is opened.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mgtool.checkpoint import atomic_write
from mgtool.errors import MgtoolError
from mgtool.provenance import sha256_file
from mgtool.safe_write import Busy, hold_lock

LEDGER_FORMAT = "mgtool-runner/1"
FolderBusy = Busy  # another process holds the folder's lock


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def fingerprint(name: str, config: dict[str, Any], inputs: dict[str, Path]) -> str:
    """What a stage's result depends on: its name, settings and input files' content."""
    return digest({"stage": name, "config": config, "inputs": {k: sha256_file(p) for k, p in sorted(inputs.items())}})


@dataclass(frozen=True)
class Stage:
    """One stage: ``output`` is a function of ``config`` and the content of ``inputs``."""

    name: str
    output: Path
    config: dict[str, Any]
    inputs: dict[str, Path]
    files: tuple[Path, ...] = ()  # further files the stage writes or replaces (sidecars)
    resume_state: Path | None = None  # set for resumable stages: the file that allows resuming


@dataclass(frozen=True)
class StageOutcome:
    name: str
    output: Path
    status: str  # ran | skipped | resumed | given
    wall_s: float = 0.0


class Ledger:
    """The stages and owned files of one folder. Use as a context manager (it takes the lock)."""

    def __init__(self, folder: Path | str, *, name: str = "pipeline.json", force: bool = False,
                 log: Callable[[str], None] | None = None):
        self.dir = Path(folder)
        self.path = self.dir / name
        self.force = force
        self.log = log or (lambda msg: None)
        self.data: dict[str, Any] = {"format": LEDGER_FORMAT, "stages": {}, "files": {}}
        self._lock: Any = None

    # ------------------------------------------------------------------ open / close

    def __enter__(self) -> Ledger:
        if self.dir.exists() and not self.dir.is_dir():
            raise MgtoolError(f"{self.dir}: is a file; give a folder for the stages' files")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = hold_lock(self.dir / f".{self.path.name}.lock", str(self.dir))
        self._lock.__enter__()
        try:
            self._load()
            self._remove_stale_tmp()
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.__exit__(*exc)

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            data = None
        ours = isinstance(data, dict) and data.get("format") == LEDGER_FORMAT
        if ours and isinstance(data.get("stages"), dict) and isinstance(data.get("files"), dict):
            self.data = data
            return
        if not self.force:
            what = "is corrupt" if data is None or ours else "was not written by mgtool's runner"
            raise MgtoolError(f"{self.path}: {what}; pass --force to replace it (stages recorded in it are "
                              "then rerun unless they are intact), or choose another folder")
        stages = data.get("stages") if isinstance(data, dict) else None
        if isinstance(stages, dict):  # adopt a ledger the user vouches for (--force), e.g. an older format
            kept = {k: v for k, v in stages.items() if isinstance(v, dict) and isinstance(v.get("output"), str)}
            self.data["stages"] = kept
            self.data["files"] = {v["output"]: None for v in kept.values()}
        self._save()
        self.log(f"{self.path.name}: replaced (--force)")

    def _remove_stale_tmp(self) -> None:
        for rel in [*self.data["files"], self.path.name]:
            target = self.dir / rel
            if target.parent.is_dir():
                for tmp in target.parent.glob(f".{_glob_escape(target.name)}.*.tmp"):
                    tmp.unlink(missing_ok=True)

    def _save(self) -> None:
        text = json.dumps(self.data, indent=1, sort_keys=True)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text))

    # ------------------------------------------------------------------ ownership

    def _rel(self, path: Path) -> str:
        try:
            return Path(path).resolve().relative_to(self.dir.resolve()).as_posix()
        except ValueError:
            raise MgtoolError(f"{path}: outside {self.dir}; a stage writes only inside its folder") from None

    def owns(self, path: Path) -> bool:
        """True when the runner wrote ``path`` and it was not changed since (when known)."""
        rel = self._rel(path)
        if rel not in self.data["files"]:
            return False
        recorded = self.data["files"][rel]
        return recorded is None or not Path(path).exists() or sha256_file(path) == recorded

    def claim(self, *paths: Path) -> None:
        """Take ownership of files about to be written; refuse files the runner does not own."""
        for path in paths:
            if Path(path).exists() and not self.owns(path) and not self.force:
                changed = self._rel(path) in self.data["files"]
                why = "was changed since this pipeline wrote it" if changed else "was not written by this pipeline"
                raise MgtoolError(f"{path}: exists and {why}; pass --force to replace it, or choose another "
                                  "output folder")
        for path in paths:
            self.data["files"][self._rel(path)] = None
        self._save()

    def record(self, *paths: Path) -> None:
        """Note the content of owned files that now exist (a later change makes them foreign)."""
        for path in paths:
            self.data["files"][self._rel(path)] = sha256_file(path) if Path(path).is_file() else None
        self._save()

    def write_text(self, path: Path, text: str) -> Path:
        """Write one small file the runner owns (a summary, a resolved config)."""
        self.claim(path)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))
        self.record(path)
        return path

    # ------------------------------------------------------------------ stages

    def entry(self, name: str) -> dict[str, Any] | None:
        return self.data["stages"].get(name)

    def run(self, stage: Stage, work: Callable[[Path, bool], None]) -> StageOutcome:
        """Run ``work(output, resume)`` unless the stage is done; record what it wrote."""
        output = stage.output
        fp = fingerprint(stage.name, stage.config, stage.inputs)
        entry = self.entry(stage.name)
        if (entry and entry.get("status") == "done" and entry.get("fingerprint") == fp and output.exists()
                and sha256_file(output) == entry.get("sha256")):
            self.log(f"{stage.name}: up to date, skipped ({output.name})")
            return StageOutcome(stage.name, output, "skipped")
        resume = bool(stage.resume_state is not None and entry and entry.get("status") == "running"
                      and entry.get("fingerprint") == fp and stage.resume_state.exists())
        files = (output, *stage.files)
        self.claim(*files)
        rel = self._rel(output)
        self.data["stages"][stage.name] = {"fingerprint": fp, "output": rel, "status": "running"}
        self._save()
        self.log(f"{stage.name}: {'resuming' if resume else 'running'} -> {output.name}")
        t0 = time.perf_counter()
        work(output, resume)
        wall = time.perf_counter() - t0
        sha = sha256_file(output)
        self.data["stages"][stage.name] = {"fingerprint": fp, "output": rel, "status": "done", "sha256": sha,
                                           "wall_s": wall}
        self.data["files"][rel] = sha
        self.record(*stage.files)
        return StageOutcome(stage.name, output, "resumed" if resume else "ran", wall)


def _glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)
