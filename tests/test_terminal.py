"""Output that survives an 80-column terminal: no table cell cut with "…", help reflowed to 80
columns, for every command's --help and for the tables of ``run`` and ``demo --quick``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from mgtool.cli import app

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = sorted(typer.main.get_command(app).commands)


def mgtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "80", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "mgtool", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def fits(text: str) -> None:
    assert "…" not in text, "\n".join(line for line in text.splitlines() if "…" in line)
    wide = [line for line in text.splitlines() if len(line.rstrip()) > 80]
    assert wide == [], wide[:3]


@pytest.mark.parametrize("command", ["", *COMMANDS])
def test_help_fits_80_columns(command: str, tmp_path: Path) -> None:
    done = mgtool(*([command] if command else []), "--help", cwd=tmp_path)
    fits(done.stdout)
    assert any(len(line) == 80 for line in done.stdout.splitlines())  # really laid out at 80 columns


def test_run_table_fits_80_columns(tmp_path: Path) -> None:
    recipe = ROOT / "recipes" / "synthetic-smoke.yaml"
    done = mgtool("run", str(recipe), "-o", str(tmp_path / "smoke"), "--quiet", "--set", "finetune.train.epochs=1",
                  "--set", "net2.growth_point=0.333", cwd=tmp_path)
    assert "net 2 (growth point" in done.stderr and "FLOPs Norm" in done.stderr
    fits(done.stderr)


def test_demo_quick_table_fits_80_columns(tmp_path: Path) -> None:
    done = mgtool("demo", "--quick", "--data", "synthetic", "-o", str(tmp_path / "demo"), cwd=tmp_path)
    table = done.stderr[done.stderr.index("accuracy and training FLOPs per stage"):done.stderr.index("next:")]
    assert "FLOPs Norm" in table and "grown + fine-tuned" in table
    fits(table)  # the "next:" commands after it are copied whole, not wrapped


def test_info_archs_fits_80_columns(tmp_path: Path) -> None:
    fits(mgtool("info", "--archs", cwd=tmp_path).stderr)


@pytest.mark.parametrize(("command", "text"), [("cka", "stages.*.*"), ("run", "runs/<recipe name>"),
                                               ("cka-time", "RUN.epochNNN.safetensors")])
def test_help_markdown_keeps_globs_and_placeholders(command: str, text: str, tmp_path: Path) -> None:
    """Help is rendered as markdown (so paragraphs reflow): a glob or a <placeholder> must be in
    backticks, or markdown eats it as emphasis or an HTML tag."""
    flat = " ".join(mgtool(command, "--help", cwd=tmp_path).stdout.replace("│", " ").split())
    assert text in flat
