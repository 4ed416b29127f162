"""Checkpoint metadata as bounded, finite JSON.

Metadata is read from files anyone can craft, so it is bounded before and while it is parsed:
its size, its nesting depth, each string's length and each integer's size; NaN, Infinity and
numbers that overflow to them are refused. On write the same rule holds (strict JSON, every
number finite), so mgtool never writes metadata that a strict JSON parser refuses.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from mgtool.errors import MgtoolError

MAX_CHARS = 4 * 2**20  # the whole metadata text
MAX_DEPTH = 32  # nesting of objects and arrays
MAX_STRING = 64 * 2**10  # characters in one string (a path, a command line)
MAX_INT_DIGITS = 19  # |n| < 10**19: any 64-bit count; larger is no size, seed or count mgtool makes
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(r"[\[\]{}]")


def loads(text: str, where: str) -> Any:
    """Parse metadata ``text``; a ``MgtoolError`` naming ``where`` for anything unbounded or non-finite."""
    if len(text) > MAX_CHARS:
        raise MgtoolError(f"{where}: the metadata is {len(text):,} characters, more than the {MAX_CHARS:,} "
                          "mgtool reads; the file was not written by mgtool")
    depth = deepest = 0
    for bracket in _BRACKET.findall(_STRING.sub('""', text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    if deepest > MAX_DEPTH:
        raise MgtoolError(f"{where}: the metadata nests {deepest} levels deep, more than the {MAX_DEPTH} "
                          "mgtool reads; the file was not written by mgtool")
    try:
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float, parse_int=_bounded_int)
    except ValueError as e:  # JSONDecodeError is one
        raise MgtoolError(f"{where}: mgtool metadata is not valid, finite JSON ({e})") from None
    _check_strings(value, where)
    return value


def dumps(value: Any, where: str) -> str:
    """Strict JSON of ``value``; refuses NaN and infinities, naming the first one's path."""
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except ValueError:
        raise MgtoolError(f"{where}: the metadata value {_first_non_finite(value) or '?'} is not a finite "
                          "number; nothing written") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} overflows to infinity")
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"the integer {text[:24]}... has more than {MAX_INT_DIGITS} digits")
    return int(text)


def _check_strings(value: Any, where: str) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings = [item]
        elif isinstance(item, dict):
            strings = list(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            strings = []
            stack.extend(item)
        else:
            continue
        for s in strings:
            if len(s) > MAX_STRING:
                raise MgtoolError(f"{where}: a metadata string of {len(s):,} characters is longer than the "
                                  f"{MAX_STRING:,} mgtool reads ({s[:24]!r}...)")


def _first_non_finite(value: Any, path: str = "") -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return f"{path or 'value'}={value}"
    if isinstance(value, dict):
        items: Any = value.items()
    elif isinstance(value, (list, tuple)):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _first_non_finite(item, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None
