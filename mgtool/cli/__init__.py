"""The ``mgtool`` command line: a thin layer over the library (one module per command)."""

from __future__ import annotations

import os

import typer

from mgtool.cli import analysis_commands, core_commands, grow_commands, run_commands, train_commands
from mgtool.cli.common import OneLineUsageGroup


def _plain_argument_labels() -> None:
    """Show arguments as SRC and SOURCES... in help, not as {src} with a <list[Path]> label.

    typer (0.2x) prints its internal type labels for arguments, and options get readable
    metavars where they are given; this keeps help free of Python type names."""
    from typer.core import TyperArgument

    def usage_name(self: TyperArgument) -> str:
        name = self.display_name_raw.upper()
        name = name if self.required else f"[{name}]"
        return name + ("..." if self.nargs != 1 else "")

    def rich_name(self: TyperArgument) -> str:
        return self.display_name_raw.upper() + ("..." if self.nargs != 1 else "")

    if hasattr(TyperArgument, "_usage_display_name"):
        TyperArgument._usage_display_name = usage_name  # type: ignore[method-assign]
    if hasattr(TyperArgument, "_rich_display_name"):
        TyperArgument._rich_display_name = rich_name  # type: ignore[method-assign]
    if hasattr(TyperArgument, "display_type_rich"):
        TyperArgument.display_type_rich = lambda self, ctx: None  # type: ignore[method-assign]


_plain_argument_labels()

app = typer.Typer(
    name="mgtool",
    cls=OneLineUsageGroup,
    help="Grow neural networks the MixtureGrowth way: convert -> train-small -> fuse -> finetune -> export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",  # a docstring paragraph is reflowed to the terminal (no ragged lines at 80 columns)
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from mgtool import __version__

        print(f"mgtool {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", callback=_version,
                                 is_eager=True),
) -> None:
    if debug:
        os.environ["MGTOOL_DEBUG"] = "1"


core_commands.register(app)
grow_commands.register(app)
train_commands.register(app)
analysis_commands.register(app)
run_commands.register(app)


def main() -> int:
    try:
        app()
    except SystemExit as e:
        return int(e.code or 0) if not isinstance(e.code, str) else 1
    return 0
