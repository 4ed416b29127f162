"""Shared CLI plumbing: stderr console, one-line errors, stdout emission, option parsing."""

from __future__ import annotations

import functools
import json
import math
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.text import Text
from typer.core import TyperGroup
from typer.exceptions import TyperException

from mgtool.errors import MgtoolError, SettingError, first_line
from mgtool.sanitize import escape, safe_console

if TYPE_CHECKING:
    from mgtool.archs import ArchSpec

# User text (paths, metadata) is printed literally: no rich markup, no highlighting.
console = safe_console()

# Options that mean the same in every command that writes one checkpoint.
SrcArg = Annotated[Path, typer.Argument(help="Input checkpoint.", show_default=False)]
OutOpt = Annotated[Path, typer.Option("-o", "--output", help="Output .safetensors file.", show_default=False)]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite an existing output file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout instead of the path.")]
F = TypeVar("F", bound=Callable[..., Any])


def debug_enabled() -> bool:
    return os.environ.get("MGTOOL_DEBUG", "") not in ("", "0")


def handle_errors(func: F) -> F:
    """Turn errors into one line on stderr: exit 1, or 2 for a bad option value (a usage
    error). A traceback with --debug. Warnings raised on the way are shown only if the
    command succeeds (or with --debug), so they never bury the error line."""
    stage = "mgtool " + func.__name__.removesuffix("_cmd").replace("_", "-")

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        failure: tuple[str, int] | None = None
        passthrough: BaseException | None = None
        trace = ""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            try:
                result = func(*args, **kwargs)
            except (TyperException, typer.Exit, typer.Abort, SystemExit) as e:
                passthrough = e
            except BaseException as e:
                failure = _classify(e, stage)
                if failure is None:
                    raise
                if debug_enabled():
                    trace = traceback.format_exc()
            pending = list(caught)
        # Outside catch_warnings, so they print: after success, or with --debug.
        if failure is None or debug_enabled():
            _replay(pending)
        if passthrough is not None:
            raise passthrough
        if failure is None:
            return result
        sys.stderr.write(trace)
        _report(failure[0])
        raise typer.Exit(failure[1])

    return wrapper  # type: ignore[return-value]


class OneLineUsageGroup(TyperGroup):
    """The ``mgtool`` group: every click usage error (a parse error, an unknown option, a
    missing argument, a bad value) is mgtool's one line on stderr, exit 2, never click's box."""

    def make_context(self, *args: Any, **kwargs: Any) -> typer.Context:
        with _one_line_usage():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: typer.Context) -> Any:
        with _one_line_usage():
            return super().invoke(ctx)


@contextmanager
def _one_line_usage() -> Iterator[None]:
    # typer vendors click; its exceptions share the public base TyperException.
    try:
        yield
    except TyperException as e:
        if type(e).__name__ == "NoArgsIsHelpError" or not hasattr(e, "format_message"):
            raise  # `mgtool` alone prints the help
        ctx = getattr(e, "ctx", None)
        where, hint = (f"{ctx.command_path}: ", f"; see {ctx.command_path} --help") if ctx is not None else ("", "")
        _report(f"error: {where}{e.format_message().rstrip('.')}{hint}")
        raise typer.Exit(getattr(e, "exit_code", 2)) from None


def check_arch(name: str | None) -> None:
    """An unknown --arch is a usage error (exit 2)."""
    if name is None:
        return
    from mgtool.archs import family_names

    if name not in family_names():
        raise usage_error(f"--arch: unknown architecture {name!r}; known: {', '.join(family_names())}")


def _classify(e: BaseException, stage: str) -> tuple[str, int] | None:
    """The one error line and exit code for ``e`` (None: not ours to report)."""
    if isinstance(e, SettingError):
        return f"error: {e}", 2
    if isinstance(e, MgtoolError):
        return f"error: {e}", 1
    if isinstance(e, KeyboardInterrupt):
        return "error: interrupted", 1
    if isinstance(e, OSError):
        where = e.filename if e.filename is not None else stage
        return f"error: {where}: {e.strerror or first_line(e)}", 1
    if isinstance(e, Exception):  # a bug: still one line unless --debug
        return (f"error: {stage}: unexpected {type(e).__name__}: {first_line(e)} "
                "(rerun with --debug for the traceback)", 1)
    return None


def usage_error(message: str) -> typer.Exit:
    """One line on stderr and exit code 2 (a bad option or a missing one): ``raise usage_error(...)``."""
    _report(f"error: {message}")
    return typer.Exit(2)


def _replay(caught: list[warnings.WarningMessage]) -> None:
    for w in caught:
        warnings.showwarning(escape(str(w.message)), w.category, w.filename, w.lineno)  # type: ignore[arg-type]


def _report(message: str) -> None:
    sys.stderr.write(escape(message.replace("\n", " ")) + "\n")


def done(word: str, rest: str) -> None:
    """``word`` in green, then ``rest`` (user text, printed literally) on stderr."""
    console.print(Text.assemble((word, "green"), " ", escape(rest)), soft_wrap=True)


def strict_json(value: Any) -> Any:
    """``value`` with NaN and infinities replaced by None (null): JSON has no NaN."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def emit(path: Any, payload: dict[str, Any], as_json: bool) -> None:
    """stdout carries only the output path, or exactly one JSON object with --json."""
    if as_json:
        payload = strict_json(json.loads(json.dumps(payload, default=str)))
        sys.stdout.write(json.dumps(payload, allow_nan=False) + "\n")
    else:
        sys.stdout.write(f"{escape(str(path))}\n")


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """``--opt depth=28 --opt norm=block-input`` -> {"depth": 28, "norm": "block-input"}."""
    options: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--opt")
        try:
            options[key] = json.loads(value, parse_constant=_not_finite, parse_float=_finite)
        except json.JSONDecodeError:
            options[key] = value
        except ValueError:
            raise typer.BadParameter(f"{pair!r}: {value} is not a finite number", param_hint="--opt") from None
    return options


def _not_finite(name: str) -> Any:
    raise ValueError(name)


def _finite(text: str) -> float:
    if not math.isfinite(value := float(text)):
        raise ValueError(text)
    return value


def arch_spec(
    arch: str | None, width: float | None, num_classes: int | None, in_chans: int, opts: list[str] | None
) -> ArchSpec | None:
    if arch is None:
        if width is not None or opts:
            raise typer.BadParameter("--width and --opt need --arch", param_hint="--arch")
        return None
    if width is None:
        raise typer.BadParameter("--arch needs --width", param_hint="--width")
    from mgtool.archs import ArchSpec

    return ArchSpec(arch, width, num_classes or 0, in_chans, parse_options(opts))
