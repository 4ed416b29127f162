"""Adversarial inputs (issue 12): non-finite state, unbounded work, messages and exit codes,
the newcomer's path. Every case here failed, or misled, before the fix."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import mgtool
from mgtool.checkpoint import METADATA_KEY, read_raw_metadata
from mgtool.cli import app
from mgtool.cli.common import strict_json

from .conftest import one_line as _one_line

runner = CliRunner()


def _run(args: list[str]):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def plain(tm, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("harden") / "plain.safetensors"
    mgtool.export(tm, out)
    return out


def _rewrite(src: Path, dst: Path, *, tensors=None, meta=None) -> Path:
    """A copy of ``src`` with changed tensors or metadata, written without mgtool's checks."""
    sd = load_file(str(src))
    raw = json.loads(read_raw_metadata(src)[METADATA_KEY])
    if tensors:
        tensors(sd)
    if meta:
        meta(raw)
    save_file(sd, str(dst), metadata={METADATA_KEY: json.dumps(raw)})
    return dst


def _poison(key_part: str, value: float):
    def change(sd):
        key = next(k for k in sd if key_part in k and sd[k].is_floating_point())
        sd[key].view(-1)[0] = value

    return change


# 1. Non-finite state never passes as good ---------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_save_checkpoint_refuses_non_finite_buffers_and_parameters(tm, tmp_path, value):
    from mgtool.checkpoint import read_meta, save_checkpoint

    meta = read_meta(tm)
    for key in ("running_var", "banks"):
        sd = load_file(str(tm))
        name = next(k for k in sd if key in k)
        sd[name].view(-1)[0] = value
        out = tmp_path / f"{key}.safetensors"
        with pytest.raises(mgtool.MgtoolError, match=f"tensor {name} holds NaN/Inf; nothing written"):
            save_checkpoint(out, sd, meta, force=False)
        assert not out.exists() and list(tmp_path.glob(".*.tmp")) == []


@pytest.mark.parametrize("noise", ["inf", "nan", "-1"])
def test_fuse_refuses_non_finite_noise(tm, tmp_path, noise):
    out = tmp_path / "g.safetensors"
    line = _one_line(_run(["fuse", tm, "--init", "copy", "--noise", noise, "-o", out]), code=2)
    assert "--noise" in line and not out.exists()


@pytest.mark.parametrize("command", ["export", "grow"])
def test_writers_refuse_non_finite_inputs(tm, plain, tmp_path, command):
    if command == "export":
        bad = _rewrite(tm, tmp_path / "bad.safetensors", tensors=_poison("banks", float("nan")))
        args = ["export", bad]
    else:
        bad = _rewrite(plain, tmp_path / "bad.safetensors", tensors=_poison("running_var", float("inf")))
        args = ["grow", bad, "--method", "random"]
    out = tmp_path / "out.safetensors"
    line = _one_line(_run([*args, "-o", out]))
    assert "holds NaN/Inf; nothing written" in line and not out.exists()


# 2. Bounded work before validation -----------------------------------------------------------


@pytest.mark.parametrize("command", ["info", "export"])
def test_header_sizes_are_checked_against_stored_tensors_before_allocating(tm, tmp_path, command):
    def huge(raw):
        raw["plan"]["banks"][0]["templates_per_set"] = 14_000_000

    bad = _rewrite(tm, tmp_path / "huge.safetensors", meta=huge)
    assert bad.stat().st_size < 100_000
    args = [command, bad] + (["-o", tmp_path / "o.safetensors"] if command == "export" else ["--no-flops"])
    line = _one_line(_run(args))
    assert "shape mismatches" in line and "14000000" in line


@pytest.mark.parametrize("field, value", [("width", 100_000.0), ("num_classes", 1_000_000_000)])
def test_architecture_sizes_are_checked_against_stored_tensors(plain, tmp_path, field, value):
    def huge(raw):
        raw["arch"][field] = value

    bad = _rewrite(plain, tmp_path / "huge.safetensors", meta=huge)
    line = _one_line(_run(["info", bad, "--no-flops"]))
    # refused by the read-time bounds (issue 28) or, within them, by the stored shapes
    assert any(w in line for w in ("shape mismatches", "missing keys", "width must be a finite number in",
                                   "classes and"))


def test_eval_refuses_a_huge_synthetic_data_section(tm, tmp_path):
    def huge(raw):
        raw["data"] = {"name": "synthetic", "options": {"shape": "3x8x8", "test_size": 2_000_000_000}}

    bad = _rewrite(tm, tmp_path / "huge.safetensors", meta=huge)
    line = _one_line(_run(["eval", bad, "--device", "cpu"]))
    assert "exceed" in line


def test_expanded_stride0_tensors_are_refused(plain_ckpts, tmp_path):
    sd = torch.load(plain_ckpts["tiny-cnn"], weights_only=True)
    head = next(k for k in sd if k.endswith("weight") and sd[k].ndim == 2)
    sd[head] = torch.zeros(1, sd[head].shape[1]).expand(150_000_000, -1)
    src = tmp_path / "expanded.pth"
    torch.save(sd, src)
    assert src.stat().st_size < 100_000
    line = _one_line(_run(["convert", src, "--arch", "tiny-cnn", "--width", "1", "-o", tmp_path / "o.safetensors"]))
    assert head in line and "backed by only" in line


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))


@pytest.mark.parametrize("text, words", [(BOMB, "aliases expand"), ("name: a\nname: b\n", "duplicate key 'name'")])
def test_recipe_yaml_bombs_and_duplicate_keys_are_refused(tmp_path, text, words):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    assert len(text) < 1200
    line = _one_line(_run(["run", recipe, "-o", tmp_path / "run"]))
    assert words in line


def test_override_values_are_bounded_too():
    from mgtool.recipe import parse_override

    keys, value = parse_override("a.b=[1, 2]")
    assert keys == ["a", "b"] and value == [1, 2]


def test_synthetic_sizes_are_bounded():
    from mgtool.data import DataConfig, dataset_info

    cfg = DataConfig.from_dict({"name": "synthetic", "options": {"train_size": 2_000_000_000}})
    with pytest.raises(mgtool.MgtoolError, match="exceed"):
        dataset_info(cfg)


# 4. Messages and exit codes ------------------------------------------------------------------


@pytest.mark.parametrize("folder", ["exp[v2]", "a[/x]", "b[bold]c"])
def test_user_text_is_printed_literally(tm, tmp_path, folder):
    out = tmp_path / folder / "plain.safetensors"
    result = _run(["export", tm, "-o", out])
    assert result.exit_code == 0, result.output
    assert str(out) in result.stderr.replace("\n", "")
    assert result.stdout.strip() == str(out)


def test_json_never_prints_nan(capsys):
    from mgtool.cli.common import emit

    emit(None, {"top1": float("nan"), "rows": [float("inf"), 1.5], "n": 2}, True)
    out = capsys.readouterr().out
    assert json.loads(out) == {"top1": None, "rows": [None, 1.5], "n": 2}
    assert "NaN" not in out and "Infinity" not in out
    assert strict_json((1.0, float("-inf"))) == [1.0, None]


@pytest.mark.parametrize("case", ["init", "arch-convert", "arch-train", "schedule", "convert-no-arch", "templates-0"])
def test_usage_errors_exit_2(case, tm, plain_ckpts, tmp_path):
    out = tmp_path / "o.safetensors"
    small = ["train-small", "--data", "synthetic", "--epochs", "0", "-o", out]
    args = {
        "init": ["fuse", tm, "--init", "ortogonal", "-o", out],
        "arch-convert": ["convert", plain_ckpts["tiny-cnn"], "--arch", "nope", "--width", "1", "-o", out],
        "arch-train": [*small, "--arch", "nope", "--width", "1"],
        "schedule": [*small, "--arch", "tiny-cnn", "--width", "1", "--schedule", "cosin"],
        "convert-no-arch": ["convert", plain_ckpts["tiny-cnn"], "-o", out],
        "templates-0": [*small, "--arch", "tiny-cnn", "--width", "1", "--templates", "0"],
    }[case]
    line = _one_line(_run(args), code=2)
    flag = {"init": "--init", "schedule": "--schedule", "templates-0": "--templates",
            "convert-no-arch": "--arch"}.get(case, "--arch")
    assert flag in line and not out.exists()


def test_version_and_help_start_without_torch():
    code = ("import runpy, sys\n"
            "for argv in (['mgtool', '--help'], ['mgtool', '--version']):\n"
            "    sys.argv = argv\n"
            "    try:\n"
            "        runpy.run_module('mgtool', run_name='__main__')\n"
            "    except SystemExit as e:\n"
            "        assert e.code in (0, None), e.code\n"
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 0, done.stderr
    assert f"mgtool {mgtool.__version__}" in done.stdout
    assert done.stdout.strip().endswith("NO-TORCH"), done.stdout[-300:]


def test_lazy_package_attributes_stay_functions():
    import mgtool.convert  # noqa: F401  (the submodule of the same name)
    import mgtool.export  # noqa: F401

    assert callable(mgtool.convert) and callable(mgtool.export) and callable(mgtool.load)
    with pytest.raises(AttributeError):
        mgtool.no_such_thing  # noqa: B018


def test_warnings_do_not_bury_the_error(monkeypatch, tmp_path):
    import mgtool.info

    def noisy(path, count_flops=True):
        warnings.warn("TypedStorage is deprecated", UserWarning, stacklevel=1)
        raise mgtool.MgtoolError(f"{path}: \x1b[31mbroken\x1b[0m")

    monkeypatch.setattr(mgtool.info, "checkpoint_info", noisy)
    line = _one_line(_run(["info", tmp_path / "x.safetensors"]))
    assert "\x1b" not in line and line.endswith("\\x1b[31mbroken\\x1b[0m")  # escaped, shown as text (issue 28)


def test_os_errors_name_the_file(monkeypatch, tmp_path):
    import mgtool.info

    def denied(path, count_flops=True):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(mgtool.info, "checkpoint_info", denied)
    line = _one_line(_run(["info", tmp_path / "x.safetensors"]))
    assert line == f"error: {tmp_path / 'x.safetensors'}: Permission denied"


def test_unexpected_errors_name_the_command(monkeypatch, tmp_path):
    import mgtool.info

    def bug(path, count_flops=True):
        raise RuntimeError("boom")

    monkeypatch.setattr(mgtool.info, "checkpoint_info", bug)
    line = _one_line(_run(["info", tmp_path / "x.safetensors"]))
    assert line.startswith("error: mgtool info: unexpected RuntimeError: boom")


# 7. The newcomer's path ----------------------------------------------------------------------


def test_missing_output_folders_are_created(tmp_path):
    out = tmp_path / "runs" / "fashion-mnist" / "net1.safetensors"
    result = _run(["train-small", "--arch", "tiny-cnn", "--width", "1", "--data", "synthetic", "--data-opt",
                   "shape=3x8x8", "--data-opt", "train_size=8", "--data-opt", "test_size=8", "--epochs", "0",
                   "-q", "-o", out])
    assert result.exit_code == 0, result.output
    assert out.exists()


def test_fusing_a_file_with_itself_needs_allow_same(tm, tmp_path):
    out = tmp_path / "g.safetensors"
    line = _one_line(_run(["fuse", tm, tm, "-o", out]), code=2)
    assert "--allow-same" in line and not out.exists()
    result = _run(["fuse", tm, tm, "--allow-same", "-o", out])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("command", ["info", "export", "fuse", "finetune"])
def test_a_pth_says_convert_it_first(plain_ckpts, tmp_path, command):
    src = plain_ckpts["tiny-cnn"]
    out = ["-o", tmp_path / "o.safetensors"]
    args = {"info": ["info", src], "export": ["export", src, *out], "fuse": ["fuse", src, *out],
            "finetune": ["finetune", src, "--epochs", "1", "--data", "synthetic", *out]}[command]
    line = _one_line(_run(args))
    assert "convert it first: mgtool convert" in line


def test_wrong_arch_reports_the_key_mismatch_first(plain_ckpts, tmp_path):
    for arch in ("tiny-mlp", "wrn"):  # same classifier name, and a different one
        line = _one_line(_run(["convert", plain_ckpts["tiny-cnn"], "--arch", arch, "--width", "1",
                               "-o", tmp_path / "o.safetensors"]))
        assert "missing" in line and "--num-classes" not in line, line


class WholeModule(torch.nn.Linear):
    pass


def test_a_pickled_whole_module_gets_a_clean_message(tmp_path):
    src = tmp_path / "whole.pth"
    torch.save(WholeModule(2, 2), src)
    line = _one_line(_run(["convert", src, "--arch", "tiny-cnn", "--width", "1", "-o", tmp_path / "o.safetensors"]))
    assert "torch.save(model.state_dict()" in line


@pytest.mark.parametrize("command", ["convert", "fuse", "train-small", "run", "cka", "eval", "demo"])
def test_help_shows_no_internal_type_labels(command):
    text = _run([command, "--help"]).stdout
    for label in ("<list[", "{src}", "{sources}", "{a}", "{recipe}"):
        assert label not in text, (command, label)


def test_one_epoch_reads_singular(monkeypatch, capsys):
    from mgtool.cli import train_commands

    class Result:
        is_main, out = True, Path("x.safetensors")

        def to_dict(self):
            return {"output": "x.safetensors", "epochs_done": 1, "test_top1": 0.5, "training_flops": 1.0,
                    "wall_s": 1.0}

    train_commands._finish(Result(), quiet=False, json_=False)
    err = capsys.readouterr().err
    assert "1 epoch," in err and "1 epochs" not in err


def test_demo_quick_has_its_own_folder_and_next_steps(monkeypatch, tmp_path):
    import mgtool.demo
    from mgtool.cli.run_commands import next_steps

    seen = []

    def fake(out_dir, **kwargs):
        seen.append(Path(out_dir))
        raise mgtool.MgtoolError("stop")

    monkeypatch.setattr(mgtool.demo, "run_demo", fake)
    _run(["demo", "--quick", "--data", "synthetic"])
    _run(["demo", "--data", "synthetic"])
    assert seen == [Path("runs/demo-quick"), Path("runs/demo")]
    text = next_steps(tmp_path)
    assert "mgtool.load(" in text and "mgtool export" in text and "mgtool eval" in text
