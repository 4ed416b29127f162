"""docs/cli.md is generated from the typer app (scripts/gen_cli_docs.py); it fails here when stale."""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_docs_cli_md_is_up_to_date() -> None:
    render = runpy.run_path(str(ROOT / "scripts" / "gen_cli_docs.py"))["render"]
    assert (ROOT / "docs" / "cli.md").read_text() == render(), \
        "docs/cli.md is stale: run `python scripts/gen_cli_docs.py` and commit it"


def test_the_reference_lists_every_command_and_initialiser() -> None:
    import typer

    from mgtool.cli import app
    from mgtool.coef_init import init_names

    text = (ROOT / "docs" / "cli.md").read_text()
    for command in typer.main.get_command(app).commands:
        assert f"## `mgtool {command}`" in text, command
    for name in init_names():
        assert f"\n{name}: " in text, name
