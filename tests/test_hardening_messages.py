"""Issue 28, items 11, 12, 14, 15: finite and bounded metadata, a printing sanitizer, and
usage errors that are mgtool's own one line (exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from mgtool.checkpoint import METADATA_KEY, read_meta, read_raw_metadata, save_checkpoint
from mgtool.cli import app
from mgtool.errors import MgtoolError
from mgtool.sanitize import escape

from .conftest import one_line as _one_line

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _with_text(src: Path, dst: Path, text: str) -> Path:
    save_file(load_file(str(src)), str(dst), metadata={METADATA_KEY: text})
    return dst


def _edited(src: Path, dst: Path, change) -> Path:
    raw = json.loads(read_raw_metadata(src)[METADATA_KEY])
    change(raw)
    return _with_text(src, dst, json.dumps(raw))


# 11. Non-finite metadata ----------------------------------------------------------------------


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_flops_are_refused_on_read(tm, tmp_path, value):
    raw = read_raw_metadata(tm)[METADATA_KEY]
    text = raw.replace('"training": 0.0', f'"training": {value}', 1)
    assert text != raw
    bad = _with_text(tm, tmp_path / "bad.safetensors", text)
    for args in (["info", bad, "--no-flops"], ["export", bad, "-o", tmp_path / "o.safetensors"]):
        line = _one_line(_run(*args))
        assert "not valid, finite JSON" in line and str(bad) in line


def test_non_finite_metadata_is_refused_on_write(tm, tmp_path):
    meta = read_meta(tm)
    bad = type(meta)(**{**meta.__dict__, "training": {"recipe": {"dropout": float("nan")}}})
    out = tmp_path / "o.safetensors"
    with pytest.raises(MgtoolError, match=r"training\.recipe\.dropout=nan is not a finite number"):
        save_checkpoint(out, load_file(str(tm)), bad, force=False)
    assert not out.exists()


def test_opt_nan_is_a_usage_error(plain_ckpts, tmp_path):
    out = tmp_path / "o.safetensors"
    line = _one_line(_run("convert", plain_ckpts["tiny-cnn"], "--arch", "tiny-cnn", "--width", "1",
                          "--opt", "dropout=NaN", "-o", out), code=2)
    assert "--opt" in line and "not a finite number" in line and not out.exists()


# 12. Terminal escapes ------------------------------------------------------------------------

EVIL = "\x1b[2J\x1b[31mRED\x1b]0;pwned-title\x07\x1bPdcs\x1b\\\x9b31m"


def test_escape_covers_csi_osc_dcs_and_c1():
    shown = escape(EVIL)
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in shown)
    assert "\\x1b]0;pwned-title\\x07" in shown and "\\x1bPdcs" in shown and "\\x9b" in shown


def test_the_console_keeps_a_messages_lines_and_escapes_every_sequence():
    """Multi-line output (the demo's next steps) keeps its newlines; ESC, BEL and CR never reach the terminal."""
    import io

    from mgtool.cli.run_commands import next_steps
    from mgtool.sanitize import safe_console

    out = io.StringIO()
    console = safe_console(file=out, width=200)
    console.print(next_steps("runs/demo") + "\nx\x1b]0;title\x07\r\x9b2J", soft_wrap=True)
    text = out.getvalue()
    assert text.startswith("next:\n  python -c") and "\\n" not in text
    assert "\x1b" not in text and "\x07" not in text and "\r" not in text and "\x9b" not in text
    assert "x\\x1b]0;title\\x07\\r\\x9b2J" in text


def test_info_prints_no_raw_escape(tm, tmp_path):
    def evil(raw):
        raw["provenance"]["command"] = ["mgtool", EVIL]

    bad = _edited(tm, tmp_path / "evil.safetensors", evil)
    r = subprocess.run([sys.executable, "-m", "mgtool", "info", str(bad), "--no-flops"], capture_output=True,
                       text=True, env={"COLUMNS": "300", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert "\x1b" not in r.stderr + r.stdout and "\x07" not in r.stderr + r.stdout
    assert "pwned-title" in r.stderr  # shown, as text


def test_error_lines_escape_osc(tmp_path):
    missing = tmp_path / "x\x1b]0;title\x07.safetensors"
    line = _one_line(_run("info", missing))
    assert "\x1b" not in line and "\x07" not in line and "\\x1b]0;title\\x07" in line


# 14. Bounded parsing -------------------------------------------------------------------------


def _deep(n: int) -> str:
    return "[" * n + "]" * n


@pytest.mark.parametrize("case", ["deep-100000", "deep-600-json", "long-string", "width-1e308", "width-nan",
                                  "negative-tile", "templates-2^62", "huge-int"])
def test_crafted_metadata_is_a_one_line_error_not_a_bug_report(tm, tmp_path, case):
    raw_text = read_raw_metadata(tm)[METADATA_KEY]
    raw = json.loads(raw_text)
    args = ["info"]
    if case.startswith("deep"):
        n = int(case.split("-")[1])
        text = raw_text[:-1] + f', "x": {_deep(n)}' + "}"
        args = ["info", "--json"] if case.endswith("json") else args
    elif case == "long-string":
        raw["provenance"]["command"] = ["x" * 5_000_000]
        text = json.dumps(raw)
    elif case.startswith("width"):
        text = raw_text.replace(f'"width": {json.dumps(raw["arch"]["width"])}',
                                '"width": 1e308' if case == "width-1e308" else '"width": NaN', 1)
    elif case == "negative-tile":
        raw["plan"]["banks"][0]["tile_shape"][0] = -1
        text = json.dumps(raw)
    elif case == "templates-2^62":
        raw["plan"]["banks"][0]["templates_per_set"] = 2**62
        text = json.dumps(raw)
    else:
        text = raw_text[:-1] + ', "x": ' + "9" * 5000 + "}"
    bad = _with_text(tm, tmp_path / "bad.safetensors", text)
    line = _one_line(_run(*args, bad, "--no-flops"))
    assert str(bad) in line and "unexpected" not in line, line


@pytest.mark.parametrize("seed", ["abc", 1e30, -1])
def test_like_refuses_a_junk_stored_seed(tm, tmp_path, seed):
    def junk(raw):
        raw["training"] = {"recipe": {"seed": seed}}

    bad = _edited(tm, tmp_path / "seed.safetensors", junk)
    line = _one_line(_run("train-small", "--like", bad, "--data", "synthetic", "--data-opt", "shape=3x16x16",
                          "--data-opt", "classes=5", "--epochs", "0", "-o", tmp_path / "o.safetensors"))
    assert "training.recipe.seed" in line and "unexpected" not in line


@pytest.mark.parametrize("kind", ["sparse", "meta", "nested", "nan-running-var"])
def test_odd_tensors_in_a_pth_are_named(plain_ckpts, tmp_path, kind):
    sd = torch.load(plain_ckpts["tiny-cnn"], weights_only=True)
    head = next(k for k in sd if k.endswith("weight") and sd[k].ndim == 2)
    if kind == "sparse":
        sd[head] = sd[head].to_sparse()
    elif kind == "meta":
        sd[head] = torch.empty(sd[head].shape, device="meta")
    elif kind == "nested":
        sd[head] = torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)])
    else:
        head = next(k for k in sd if k.endswith("running_var"))
        sd[head] = sd[head].clone()
        sd[head][0] = float("nan")
    src = tmp_path / "odd.pth"
    torch.save(sd, src)
    line = _one_line(_run("convert", src, "--arch", "tiny-cnn", "--width", "1", "-o", tmp_path / "o.safetensors"))
    assert f"tensor {head}" in line and "unexpected" not in line


# 15. Usage errors ----------------------------------------------------------------------------

SMALL = ["train-small", "--arch", "tiny-cnn", "--width", "1", "--data", "synthetic", "--epochs", "1"]


@pytest.mark.parametrize("args, words", [
    (["train-small", "--epochs", "nan"], "--epochs"),
    (["export", "x.safetensors", "--bogus"], "No such option: --bogus"),
    (["fuse"], "Missing argument"),
    (["train-small", "--like", "x.safetensors", "--arch", "tiny-cnn", "--width", "1"], "exactly one of"),
    ([*SMALL, "--device", "nope"], "--device must be"),
    (["train-small", "--arch", "tiny-cnn", "--width", "1", "--data", "fmnist", "--epochs", "1"],
     "did you mean fashion-mnist"),
    ([*SMALL, "--budget", "-1"], "--budget must be"),
    ([*SMALL, "--in-chans", "0"], "--in-chans"),
    ([*SMALL, "--num-classes", "0"], "--num-classes"),
])
def test_usage_errors_are_one_line_exit_2(tmp_path, args, words):
    line = _one_line(_run(*args, "-o", tmp_path / "o.safetensors"), code=2)
    assert words in line and "╭" not in line


@pytest.mark.parametrize("args, words", [
    (["eval", "{tm}", "--limit", "0"], "--limit"),
    (["eval", "{tm}", "--split", "bogus"], "--split"),
    (["fuse", "{tm}", "--factor", "0", "-o", "{out}"], "--factor"),
])
def test_bad_values_of_library_settings_exit_2(tm, tmp_path, args, words):
    args = [a.format(tm=tm, out=tmp_path / "o.safetensors") for a in args]
    line = _one_line(_run(*args, *(["--data", "synthetic"] if args[0] == "eval" else [])), code=2)
    assert words in line


def test_recipes_read_1e30_as_a_number():
    from mgtool.recipe import parse_override, safe_load

    assert safe_load("a: 1e30\nb: 1.0e30\nc: -2E-3\nd: 1e\n") == {"a": 1e30, "b": 1e30, "c": -2e-3, "d": "1e"}
    assert parse_override("fuse.init_scale=1e30") == (["fuse", "init_scale"], 1e30)


def test_replayed_warnings_are_escaped(monkeypatch):
    import warnings

    from mgtool.cli.common import _replay

    shown = []
    monkeypatch.setattr(warnings, "showwarning", lambda message, *rest: shown.append(str(message)))
    _replay([warnings.WarningMessage("from x\x1b]0;title\x07", UserWarning, "f.py", 1)])
    assert shown == ["from x\\x1b]0;title\\x07"]
