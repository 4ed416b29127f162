"""What a training run tells people on stderr: a live bar (TTY only) and one line per epoch.

Lines are printed literally (no Rich markup): a note may hold a path such as ``exp[v2]/``."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mgtool.sanitize import safe_console


class Reporter:
    """``quiet`` silences everything; the bar shows only when stderr is a terminal."""

    def __init__(self, *, quiet: bool, main: bool, console: Console | None = None):
        self.console = console or safe_console()
        self.lines = main and not quiet
        self.bar = self.lines and self.console.is_terminal
        self._progress: Progress | None = None
        self._task: Any = None

    def start_epoch(self, epoch: int, epochs: int, steps: int) -> None:
        if not self.bar:
            return
        self._progress = Progress(
            TextColumn(f"epoch {epoch}/{epochs}", markup=False), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}", markup=False), TimeRemainingColumn(),
            console=self.console, transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task("train", total=steps, stats="")

    def wants_stats(self, step: int) -> bool:
        return self.bar and step % 10 == 0

    def advance(self, steps: int, stats: str | None = None) -> None:
        if self._progress is not None:
            fields = {"stats": stats} if stats is not None else {}
            self._progress.update(self._task, completed=steps, **fields)

    def end_epoch(self, line: str) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self.lines:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        if self.lines:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
