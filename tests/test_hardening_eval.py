"""Issue 28, items 9 and 14 (labels): no accuracy from NaN logits; labels outside the classes are refused."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from mgtool.cli import app
from mgtool.data import Arrays, get_dataset

from .conftest import one_line as _one_line
from .test_hardening import _rewrite

runner = CliRunner()
DATA = ["--data", "synthetic", "--data-opt", "shape=3x16x16", "--data-opt", "test_size=32", "--data-opt", "classes=5",
        "--device", "cpu"]


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_eval_refuses_nan_logits_from_a_negative_running_var_naming_the_layer(tm, tmp_path):
    def negative(sd):
        key = next(k for k in sd if k.endswith("running_var"))
        sd[key].fill_(-1.0)

    bad = _rewrite(tm, tmp_path / "neg.safetensors", tensors=negative)
    line = _one_line(_run("eval", bad, *DATA, "--json"))
    assert "logits are not finite" in line and "BatchNorm2d" in line and "layer " in line


def test_eval_refuses_inf_logits_from_a_huge_init_scale(tm, tmp_path):
    grown = tmp_path / "g.safetensors"
    r = _run("fuse", tm, "--factor", "2", "--init-scale", "1e30", "-o", grown)
    if r.exit_code != 0:  # refusing the scale up front is as good as refusing its logits
        assert "init-scale" in r.stderr or "NaN/Inf" in r.stderr, r.stderr
        return
    line = _one_line(_run("eval", grown, *DATA, "--json"))
    assert "logits are not finite" in line and "layer " in line


def test_labels_outside_the_classes_are_a_clear_error(tm, tmp_path):
    folder = tmp_path / "fm"
    dataset = get_dataset("fashion-mnist")
    for split, n in (("train", 32), ("test", 16)):
        labels = torch.zeros(n, dtype=torch.long)
        labels[3] = 164
        dataset.write_arrays(folder, split, Arrays(torch.zeros(n, 1, 28, 28, dtype=torch.uint8), labels))
    args = ["--arch", "tiny-cnn", "--width", "1", "--data", "fashion-mnist", "--data-dir", folder,
            "--batch-size", "16", "--quiet", "--device", "cpu", "-o", tmp_path / "o.safetensors"]
    line = _one_line(_run("train-small", *args, "--epochs", "1"))
    assert "labels hold 164" in line and "10 classes" in line
