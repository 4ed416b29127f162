"""Adversarial probe (issue 12): every case must end with exit code 1 or 2, one ``error:`` line
on stderr, nothing on stdout, no ANSI codes, and no output file. Run from the repository root:

    python tests/adversarial_probe.py

It prints one line per case and "N cases tried, M handled". test_hardening.py asserts the same cases.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, os.getcwd())  # this checkout's mgtool, not an installed one

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from mgtool.checkpoint import read_raw_metadata  # noqa: E402
from mgtool.cli import app  # noqa: E402

OUT = "out/o.safetensors"
SYNTH = ["--data", "synthetic", "--data-opt", "shape=3x8x8"]
runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def rewrite(src: str, dst: str, tensors=None, meta=None) -> str:
    sd = load_file(src)
    raw = json.loads(read_raw_metadata(Path(src))["mgtool"])
    if tensors:
        tensors(sd)
    if meta:
        meta(raw)
    save_file(sd, dst, metadata={"mgtool": json.dumps(raw)})
    return dst


def poison(part: str, value: float):
    def change(sd):
        key = next(k for k in sd if part in k and sd[k].is_floating_point())
        sd[key].view(-1)[0] = value

    return change


def set_meta(path: list[str], value):
    def change(raw):
        node = raw
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return change


def make_inputs() -> None:
    small = ["--arch", "tiny-cnn", "--width", "1", *SYNTH, "-q"]
    assert run("train-small", *small, "--epochs", "0", "-o", "tm.safetensors").exit_code == 0
    assert run("export", "tm.safetensors", "-o", "plain.safetensors").exit_code == 0
    plain = {k: v.clone() for k, v in load_file("plain.safetensors").items()}
    torch.save(plain, "w.pth")
    head = next(k for k in plain if plain[k].ndim == 2)
    torch.save({**plain, head: torch.zeros(1, plain[head].shape[1]).expand(150_000_000, -1)}, "exp.pth")
    torch.save(torch.nn.Linear(2, 2), "whole.pth")
    laughs = "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))
    Path("bomb.yaml").write_text("a: &a [x,x,x,x,x,x,x,x,x]\n" + laughs)
    Path("dup.yaml").write_text("name: a\nname: b\n")
    Path("trunc.safetensors").write_bytes(Path("tm.safetensors").read_bytes()[:300])


def cases() -> dict[str, list]:
    nan, inf = float("nan"), float("inf")
    more_templates = set_meta(["plan", "banks", 0, "templates_per_set"], 14_000_000)
    big_data = set_meta(["data"], {"name": "synthetic", "options": {"shape": "3x8x8", "test_size": 2_000_000_000}})
    tiny = ["--arch", "tiny-cnn", "--width", "1", "--data", "synthetic", "--epochs", "0", "-o", OUT]
    return {
        "fuse --noise inf": ["fuse", "tm.safetensors", "--init", "copy", "--noise", "inf", "-o", OUT],
        "fuse --noise nan": ["fuse", "tm.safetensors", "--init", "copy", "--noise", "nan", "-o", OUT],
        "fuse the same file twice": ["fuse", "tm.safetensors", "tm.safetensors", "-o", OUT],
        "fuse --init typo": ["fuse", "tm.safetensors", "--init", "ortogonal", "-o", OUT],
        "fuse a .pth": ["fuse", "w.pth", "-o", OUT],
        "export a NaN bank": [
            "export", rewrite("tm.safetensors", "nan.safetensors", tensors=poison("banks", nan)), "-o", OUT],
        "export an Inf running_var": [
            "export", rewrite("tm.safetensors", "inf.safetensors", tensors=poison("running_var", inf)), "-o", OUT],
        "grow random from Inf": [
            "grow", rewrite("plain.safetensors", "pinf.safetensors", tensors=poison("running_var", inf)),
            "--method", "random", "-o", OUT],
        "grow net2net from NaN": [
            "grow", rewrite("plain.safetensors", "pnan.safetensors", tensors=poison("weight", nan)),
            "--method", "net2net", "-o", OUT],
        "fuse a NaN input": ["fuse", "nan.safetensors", "-o", OUT],
        "finetune a NaN input": ["finetune", "nan.safetensors", "--epochs", "1", "-q", "-o", OUT],
        "info: templates_per_set 14e6": [
            "info", rewrite("tm.safetensors", "h1.safetensors", meta=more_templates), "--no-flops"],
        "export: templates_per_set 14e6": ["export", "h1.safetensors", "-o", OUT],
        "info: width 1e5": [
            "info", rewrite("plain.safetensors", "h2.safetensors", meta=set_meta(["arch", "width"], 1e5)),
            "--no-flops"],
        "info: 1e9 classes": [
            "info", rewrite("plain.safetensors", "h3.safetensors", meta=set_meta(["arch", "num_classes"], 10**9)),
            "--no-flops"],
        "eval: 2e9 synthetic images": [
            "eval", rewrite("tm.safetensors", "h4.safetensors", meta=big_data), "--device", "cpu"],
        "eval: 100000x100000 synthetic images": [
            "eval", "tm.safetensors", "--data", "synthetic", "--data-opt", "shape=3x100000x100000", "--device", "cpu"],
        "convert a stride-0 classifier": ["convert", "exp.pth", "--arch", "tiny-cnn", "--width", "1", "-o", OUT],
        "convert a whole pickled module": ["convert", "whole.pth", "--arch", "tiny-cnn", "--width", "1", "-o", OUT],
        "convert without --arch": ["convert", "w.pth", "-o", OUT],
        "convert --arch typo": ["convert", "w.pth", "--arch", "nope", "--width", "1", "-o", OUT],
        "convert the wrong --arch": ["convert", "w.pth", "--arch", "wrn", "--width", "1", "-o", OUT],
        "info a .pth": ["info", "w.pth"],
        "export a .pth": ["export", "w.pth", "-o", OUT],
        "finetune a .pth": ["finetune", "w.pth", "--epochs", "1", "--data", "synthetic", "-o", OUT],
        "train-small --templates 0": ["train-small", *tiny, "--templates", "0"],
        "train-small --schedule typo": ["train-small", *tiny, "--schedule", "cosin"],
        "train-small --arch typo": ["train-small", "--arch", "nope", *tiny[2:]],
        "run a billion-laughs recipe": ["run", "bomb.yaml", "-o", "runs/b"],
        "run a recipe with duplicate keys": ["run", "dup.yaml", "-o", "runs/d"],
        "info a missing path with [/x]": ["info", "a[/x]/m.safetensors"],
        "info a truncated file": ["info", "trunc.safetensors"],
        "info a directory": ["info", "."],
        "export into a file used as a folder": ["export", "tm.safetensors", "-o", "tm.safetensors/x.safetensors"],
    }


def main() -> int:
    torch.set_num_threads(1)
    os.chdir(tempfile.mkdtemp(prefix="mgtool-probe-"))
    make_inputs()
    tried = cases()
    handled = 0
    for name, args in tried.items():
        result = run(*args)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        ok = (result.exit_code in (1, 2) and len(lines) == 1 and lines[0].startswith("error: ")
              and result.stdout == "" and "\x1b" not in result.stderr and not Path(OUT).exists())
        handled += ok
        print(f"{'ok ' if ok else 'BAD'} {name}: exit {result.exit_code}: {lines[-1][:140] if lines else ''}")
    print(f"{len(tried)} cases tried, {handled} handled")
    return 0 if handled == len(tried) else 1


if __name__ == "__main__":
    raise SystemExit(main())
