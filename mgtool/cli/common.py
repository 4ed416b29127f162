"""Shared CLI plumbing: stderr console, one-line errors, stdout emission, option parsing."""

from __future__ import annotations

import functools
import json
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from typer.exceptions import TyperException

from mgtool.archs import ArchSpec
from mgtool.errors import MgtoolError, first_line

console = Console(stderr=True)

# Options that mean the same in every command that writes one checkpoint.
SrcArg = Annotated[Path, typer.Argument(help="Input checkpoint.", show_default=False)]
OutOpt = Annotated[Path, typer.Option("-o", "--output", help="Output .safetensors file.", show_default=False)]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of the path.")]
F = TypeVar("F", bound=Callable[..., Any])


def debug_enabled() -> bool:
    return os.environ.get("MGTOOL_DEBUG", "") not in ("", "0")


def handle_errors(func: F) -> F:
    """Turn errors into one line on stderr and exit code 1 (a traceback with --debug)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (TyperException, typer.Exit, typer.Abort, SystemExit):
            raise
        except MgtoolError as e:
            _report(f"error: {e}")
        except KeyboardInterrupt:
            _report("error: interrupted")
        except Exception as e:  # a bug: still one line unless --debug
            _report(f"error: unexpected {type(e).__name__}: {first_line(e)} "
                    "(rerun with --debug for the traceback)")
        raise typer.Exit(1)

    return wrapper  # type: ignore[return-value]


def _report(message: str) -> None:
    if debug_enabled():
        traceback.print_exc(file=sys.stderr)
    sys.stderr.write(message.replace("\n", " ") + "\n")


def emit(path: Any, payload: dict[str, Any], as_json: bool) -> None:
    """stdout carries only the output path, or exactly one JSON object with --json."""
    if as_json:
        sys.stdout.write(json.dumps(payload, default=str) + "\n")
    else:
        sys.stdout.write(f"{path}\n")


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``--opt depth=28 --opt norm=block-input`` -> {"depth": 28, "norm": "block-input"}."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--opt")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def arch_spec(
    arch: str | None, width: float | None, num_classes: int | None, in_chans: int, opts: list[str] | None
) -> ArchSpec | None:
    if arch is None:
        if width is not None or opts:
            raise typer.BadParameter("--width and --opt need --arch", param_hint="--arch")
        return None
    if width is None:
        raise typer.BadParameter("--arch needs --width", param_hint="--width")
    return ArchSpec(arch, width, num_classes or 0, in_chans, parse_options(opts))
