"""Which checkpoints ``cka-time`` compares: files as given, run folders by epoch."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mgtool.errors import MgtoolError
from mgtool.train.paths import EPOCH_FILE


@dataclass(frozen=True)
class EpochCheckpoint:
    path: Path
    run: str
    epoch: int | None

    def label(self, several_runs: bool) -> str:
        """The tick label: the epoch, prefixed by the run when several runs are shown."""
        if self.epoch is None:
            return self.run
        return f"{self.run}:{self.epoch}" if several_runs else str(self.epoch)


def epoch_checkpoints(inputs: Iterable[Path]) -> list[EpochCheckpoint]:
    """Files as given; a folder stands for its ``<run>.epochNNN.safetensors`` files, by epoch."""
    found: list[EpochCheckpoint] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found.extend(_run_folder(item))
        elif item.exists():
            match = EPOCH_FILE.match(item.name)
            run = match["run"] if match else item.name.removesuffix(".safetensors")
            found.append(EpochCheckpoint(item, run, int(match["epoch"]) if match else None))
        else:
            raise MgtoolError(f"{item}: no such file or folder")
    return found


def _run_folder(folder: Path) -> list[EpochCheckpoint]:
    files = []
    for path in folder.iterdir():
        match = EPOCH_FILE.match(path.name)
        if match and path.is_file():
            files.append(EpochCheckpoint(path, match["run"], int(match["epoch"])))
    runs = sorted({f.run for f in files})
    if not files:
        raise MgtoolError(
            f"{folder}: no per-epoch checkpoints (<run>.epochNNN.safetensors); "
            "train with --keep-every 1, or pass checkpoint files"
        )
    if len(runs) > 1:
        raise MgtoolError(
            f"{folder}: holds epoch checkpoints of several runs ({', '.join(runs)}); "
            f"pass the files instead, e.g. {folder / (runs[0] + '.epoch*.safetensors')}"
        )
    return sorted(files, key=lambda f: f.epoch or 0)
