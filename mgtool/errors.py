"""User-facing errors: one line that says what is wrong and what to do.

``MgtoolError`` is any such error; the CLI prints it on stderr and exits 1. A
``SettingError`` also carries the setting it is about (its library name, e.g.
``noise``), so each front end names it in its own terms: the CLI as ``--noise``, a
recipe as ``fuse.noise``. Any other exception is a bug and is reported as one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

T = TypeVar("T")


class MgtoolError(Exception):
    """A user-facing error: the message says what is wrong and what to do."""


class SettingError(MgtoolError):
    """A bad value of one named setting.

    ``field`` is the library's name of the setting (``weight_decay``, ``noise``);
    ``problem`` says what is wrong with it, without the name. ``label`` is how the
    setting is shown; front ends change it with ``renamed`` (``--wd``, ``finetune.train.weight_decay``).
    """

    def __init__(self, field: str, problem: str, *, label: str | None = None):
        self.field, self.problem = field, problem
        self.label = label or f"--{field.replace('_', '-')}"
        super().__init__(f"{self.label} {problem}")

    def renamed(self, label: str) -> SettingError:
        return SettingError(self.field, self.problem, label=label)


def check_choice(field: str, value: T, choices: Iterable[T]) -> T:
    """``value`` if it is one of ``choices``, else a ``SettingError`` listing them."""
    allowed = tuple(choices)
    if value not in allowed:
        shown = ", ".join(str(c) for c in allowed)
        raise SettingError(field, f"must be one of {shown}, got {value!r}")
    return value


def check_range(field: str, value: Any, *, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> Any:
    """``value`` if it is a finite number inside the bounds, else a ``SettingError``."""
    import math

    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        if low is not None and high is not None:
            want = f"in {lo}, {hi}"
        elif low is not None:
            want = f"{'>' if low_open else '>='} {low:g}"
        else:
            want = f"{'<' if high_open else '<='} {high:g}"
        raise SettingError(field, f"must be a finite number {want}, got {value!r}")
    return value


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """`` (did you mean X?)`` for a mistyped ``name``: close spellings, or an abbreviation of a
    hyphenated name (``fmnist`` for ``fashion-mnist``); empty if nothing is close."""
    import difflib

    allowed = list(choices)
    short = [c for c in allowed if "-" in c and "".join(p[0] for p in c.split("-")[:-1]) + c.split("-")[-1] == name]
    close = difflib.get_close_matches(name, allowed, n=3, cutoff=0.6)
    found = list(dict.fromkeys(short + close))[:3]
    return f" (did you mean {' or '.join(found)}?)" if found else ""


def first_line(error: BaseException, limit: int = 200) -> str:
    """An exception's first message line (its type name if it has none), for one-line errors."""
    lines = str(error).strip().splitlines()
    return lines[0][:limit] if lines else type(error).__name__
