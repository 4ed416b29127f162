"""convert / export / info through the CLI: stdout rules, exit codes, bad inputs."""

import json

import pytest
import torch
from typer.testing import CliRunner

from mgtool.cli import app

from .conftest import TINY_SPECS

runner = CliRunner()


def _args_for(key: str) -> list[str]:
    spec = TINY_SPECS[key]
    args = ["--arch", spec.name, "--width", str(spec.width), "--in-chans", str(spec.in_chans)]
    for k, v in spec.options.items():
        args += ["--opt", f"{k}={v}"]
    return args


def _run(args):
    return runner.invoke(app, args)


def _one_line_error(result):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_every_command_has_help_with_an_example():
    names = [c.name for c in app.registered_commands]
    assert {"convert", "export", "info"} <= set(names)
    for name in names:
        result = _run([name, "--help"])
        assert result.exit_code == 0, name
        assert "Example" in result.stdout, name


def test_convert_info_export_round_trip(plain_ckpts, tmp_path):
    tm, plain = tmp_path / "tm.safetensors", tmp_path / "plain.safetensors"
    result = _run(["convert", str(plain_ckpts["wrn"]), *_args_for("wrn"), "-o", str(tm)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{tm}\n"

    result = _run(["info", str(tm), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["kind"] == "template-mixing" and info["arch"]["options"]["depth"] == 10
    assert info["parameters"]["coefficients"] > 0 and info["flops"]["forward_per_sample"] > 0
    assert info["provenance"]["parents"][0]["sha256"]

    result = _run(["export", str(tm), "-o", str(plain), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["output"] == str(plain)


def test_convert_json_reports_the_logit_difference(plain_ckpts, tmp_path):
    out = tmp_path / "tm.safetensors"
    result = _run(["convert", str(plain_ckpts["tiny-cnn"]), *_args_for("tiny-cnn"), "-o", str(out), "--json"])
    payload = json.loads(result.stdout)
    assert payload["max_abs_logit_diff"] <= 1e-5 * payload["logit_scale"]


def test_usage_error_exits_2(tmp_path):
    assert _run(["convert"]).exit_code == 2
    assert _run(["convert", "x.pt", "-o", str(tmp_path / "o.safetensors"), "--arch", "wrn"]).exit_code == 2


@pytest.mark.parametrize(
    "case", ["truncated", "not-a-checkpoint", "wrong-width", "wrong-arch", "missing-key", "unexpected-key",
             "missing-file", "output-folder-is-a-file", "existing-output"],
)
def test_convert_bad_inputs(case, plain_ckpts, tmp_path):
    src = plain_ckpts["tiny-cnn"]
    out = tmp_path / "out.safetensors"
    args = _args_for("tiny-cnn")
    if case == "truncated":
        data = src.read_bytes()
        src = tmp_path / "cut.pt"
        src.write_bytes(data[: len(data) // 2])
    elif case == "not-a-checkpoint":
        src = tmp_path / "notes.safetensors"
        src.write_text("hello, I am not a checkpoint\n")
    elif case == "wrong-width":
        args = ["--arch", "tiny-cnn", "--width", "2"]
    elif case == "wrong-arch":
        args = _args_for("tiny-mlp")
    elif case in ("missing-key", "unexpected-key"):
        sd = torch.load(src, weights_only=True)
        if case == "missing-key":
            sd.pop("conv2.weight")
        else:
            sd["conv9.weight"] = torch.zeros(1)
        src = tmp_path / "edited.pt"
        torch.save(sd, src)
    elif case == "missing-file":
        src = tmp_path / "nope.pt"
    elif case == "output-folder-is-a-file":
        (tmp_path / "afile").write_text("x")
        out = tmp_path / "afile" / "out.safetensors"
    elif case == "existing-output":
        out.write_bytes(b"precious")
    result = _run(["convert", str(src), *args, "-o", str(out)])
    _one_line_error(result)
    if case == "existing-output":
        assert out.read_bytes() == b"precious"
        assert "--force" in result.stderr
    else:
        assert not out.exists()
    assert list(tmp_path.glob(".*.tmp")) == []
    if case in ("missing-key", "unexpected-key"):
        assert ("conv2.weight" if case == "missing-key" else "conv9.weight") in result.stderr


def test_existing_output_is_replaced_with_force(plain_ckpts, tmp_path):
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"old")
    result = _run(["convert", str(plain_ckpts["tiny-cnn"]), *_args_for("tiny-cnn"), "-o", str(out), "--force"])
    assert result.exit_code == 0 and out.read_bytes() != b"old"


def test_export_and_info_bad_inputs(plain_ckpts, tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 16)
    out = tmp_path / "o.safetensors"
    _one_line_error(_run(["export", str(bad), "-o", str(out)]))
    _one_line_error(_run(["info", str(bad)]))
    assert not out.exists()
    # exporting a plain file is refused
    tm = tmp_path / "tm.safetensors"
    _run(["convert", str(plain_ckpts["tiny-mlp"]), *_args_for("tiny-mlp"), "-o", str(tm)])
    _run(["export", str(tm), "-o", str(out)])
    _one_line_error(_run(["export", str(out), "-o", str(tmp_path / "again.safetensors")]))


def test_debug_shows_the_traceback(tmp_path):
    result = _run(["--debug", "info", str(tmp_path / "missing.safetensors")])
    assert result.exit_code == 1 and "Traceback" in result.stderr


def test_python_dash_m_entry_point(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "mgtool", "info", "--archs", "--json"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "wrn" in json.loads(proc.stdout)
