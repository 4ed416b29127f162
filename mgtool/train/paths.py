"""The files a training run keeps next to its output OUT (see README "Training")."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SUFFIX = ".safetensors"
EPOCH_FILE = re.compile(r"(?P<run>.+)\.epoch(?P<epoch>\d+)" + re.escape(SUFFIX) + r"\Z")  # <run>.epochNNN


@dataclass(frozen=True)
class RunPaths:
    out: Path

    @property
    def stem(self) -> str:
        name = self.out.name
        return name[: -len(SUFFIX)] if name.endswith(SUFFIX) and len(name) > len(SUFFIX) else name

    @property
    def state(self) -> Path:
        """The resume sidecar: optimizer, schedule position, RNG and weights after the last epoch."""
        return self.out.with_name(f"{self.stem}.state.pt")

    @property
    def metrics(self) -> Path:
        return self.out.with_name(f"{self.stem}.metrics.jsonl")

    def epoch(self, epoch: int) -> Path:
        """The ``--keep-every`` copy after ``epoch`` epochs (1-based)."""
        return self.out.with_name(f"{self.stem}.epoch{epoch:03d}{SUFFIX}")

    def epoch_files(self) -> list[tuple[int, Path]]:
        found = []
        if self.out.parent.is_dir():
            for p in self.out.parent.iterdir():
                m = EPOCH_FILE.match(p.name)
                if m and m["run"] == self.stem:
                    found.append((int(m["epoch"]), p))
        return sorted(found)


def run_paths(out: Path | str) -> RunPaths:
    return RunPaths(Path(out))
