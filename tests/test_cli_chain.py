"""The CLI chains a user runs, end to end through the commands (tiny nets, synthetic data)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from mgtool.checkpoint import Flops, read_meta
from mgtool.cli import app

from .conftest import TINY_SPECS

runner = CliRunner()

SYNTHETIC = [
    "--data",
    "synthetic",
    "--data-opt",
    "shape=3x16x16",
    "--data-opt",
    "classes=5",
    "--data-opt",
    "train_size=64",
    "--data-opt",
    "test_size=32",
]
QUICK = ["--epochs", "1", "--batch-size", "32", "--device", "cpu", "-q"]


def _ok(args: list[str]) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, f"mgtool {' '.join(args)}\n{result.output}"
    return result.stdout


def test_chain_train_small_like_fuse_finetune_export_eval(tmp_path):
    net1, net2, grown = tmp_path / "net1.safetensors", tmp_path / "net2.safetensors", tmp_path / "grown.safetensors"
    ft, plain = tmp_path / "grown.ft.safetensors", tmp_path / "grown.plain.safetensors"
    _ok(["train-small", "--arch", "tiny-cnn", "--width", "1", *SYNTHETIC, *QUICK, "-o", str(net1)])
    _ok(["train-small", "--like", str(net1), "--seed", "1", *QUICK, "-o", str(net2)])
    assert _ok(["fuse", str(net1), str(net2), "--init", "orthogonal", "-o", str(grown)]) == f"{grown}\n"
    info = json.loads(_ok(["info", str(grown), "--json", "--no-flops"]))
    assert info["arch"]["width"] == 2.0 and [p["role"] for p in info["provenance"]["parents"]] == ["given", "input"]
    m1, m2 = read_meta(net1), read_meta(net2)
    assert m1.flops.training > 0 and m2.flops.training > 0
    assert info["flops"] == {"training": m1.flops.training + m2.flops.training, "given": m1.flops.training}
    _ok(["finetune", str(grown), *QUICK, "-o", str(ft)])  # the data set comes from the file
    _ok(["export", str(ft), "-o", str(plain)])
    report = json.loads(_ok(["eval", str(plain), "--device", "cpu", "--json"]))
    assert report["samples"] == 32 and 0.0 <= report["top1"] <= 1.0


def test_chain_convert_like_fuse_finetune_export_eval_and_grow(plain_ckpts, tmp_path):
    net1, net2, grown = tmp_path / "net1.safetensors", tmp_path / "net2.safetensors", tmp_path / "grown.safetensors"
    spec = TINY_SPECS["tiny-cnn"]
    _ok(["convert", str(plain_ckpts["tiny-cnn"]), "--arch", "tiny-cnn", "--width", str(spec.width), "-o", str(net1)])
    _ok(["train-small", "--like", str(net1), *SYNTHETIC, *QUICK, "-o", str(net2)])
    _ok(["fuse", str(net1), str(net2), "--init", "orthogonal", "--verify", "-o", str(grown)])
    assert read_meta(grown).data is not None  # from net 2: a converted net records no data set
    ft, exported = tmp_path / "grown.ft.safetensors", tmp_path / "grown.ft.plain.safetensors"
    _ok(["finetune", str(grown), *QUICK, "-o", str(ft)])
    _ok(["export", str(ft), "-o", str(exported)])
    assert json.loads(_ok(["eval", str(exported), "--device", "cpu", "--json"]))["samples"] == 32
    # Fusing with an untrained second net: train-small --epochs 0, then fuse (0 FLOPs charged for net 2).
    untrained, grown0 = tmp_path / "net2.untrained.safetensors", tmp_path / "grown0.safetensors"
    _ok(["train-small", "--like", str(net2), "--epochs", "0", "--device", "cpu", "-q", "-o", str(untrained)])
    _ok(["fuse", str(net2), str(untrained), "--verify", "-o", str(grown0)])
    assert read_meta(grown0).flops == Flops(read_meta(net2).flops.training, read_meta(net2).flops.training)
    # The baselines' outputs are plain checkpoints that finetune trains.
    small_plain, wide = tmp_path / "net1.plain.safetensors", tmp_path / "wide.safetensors"
    _ok(["export", str(net1), "-o", str(small_plain)])
    _ok(["grow", str(small_plain), "--method", "net2net", "-o", str(wide)])
    _ok(["finetune", str(wide), *SYNTHETIC, *QUICK, "-o", str(tmp_path / "wide.ft.safetensors")])
