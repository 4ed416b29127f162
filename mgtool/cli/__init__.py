"""The ``mgtool`` command line: a thin layer over the library (one module per command)."""

from __future__ import annotations

import os

import typer

from mgtool.cli import analysis_commands, core_commands, grow_commands, run_commands, train_commands

app = typer.Typer(
    name="mgtool",
    help="Grow neural networks the MixtureGrowth way: convert -> train-small -> fuse -> finetune -> export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks on errors."),
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
