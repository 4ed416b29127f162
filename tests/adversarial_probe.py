"""Adversarial probe (issues 12 and 28): every case must end with exit code 1 or 2 (2 where it
is a usage error), one ``error:`` line on stderr, nothing on stdout, no raw ESC or BEL, and no
output file; a case may add its own check (a FIFO still a FIFO, an input untouched). Run from the
repository root:

    python tests/adversarial_probe.py

It prints one line per case and "N cases tried, M handled". tests/test_hardening*.py assert the
same classes of case.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, os.getcwd())  # this checkout's mgtool, not an installed one

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from mgtool.checkpoint import read_raw_metadata  # noqa: E402
from mgtool.cli import app  # noqa: E402
from mgtool.data import Arrays, get_dataset  # noqa: E402

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


@dataclass
class Case:
    """A case beyond a plain argument list: the exit code it must give, a check of its own, or a
    real process (for resource limits, and for resume states that could corrupt the heap)."""

    args: list
    code: int | None = None  # None: 1 or 2
    check: Callable[[], bool] | None = None
    process: bool = False
    limit_file_size: bool = False
    cwd: str | None = None
    success: bool = False  # the command must succeed and print nothing raw


class _Result:
    def __init__(self, code: int, stdout: str, stderr: str):
        self.exit_code, self.stdout, self.stderr = code, stdout, stderr


def _process(case: Case) -> _Result:
    def limits() -> None:
        if case.limit_file_size:
            resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))

    env = {**os.environ, "PYTHONMALLOC": "debug", "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    env.pop("MGTOOL_DATA_DIR", None)
    r = subprocess.run([sys.executable, "-m", "mgtool", *map(str, case.args)], capture_output=True, text=True,
                       env=env, preexec_fn=limits, cwd=case.cwd, timeout=600)
    return _Result(r.returncode, r.stdout, r.stderr)


def _write_idx(folder: Path, n_train: int = 64, n_test: int = 32, label: int | None = None, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    dataset = get_dataset("fashion-mnist")
    for split, n in (("train", n_train), ("test", n_test)):
        labels = torch.randint(0, 10, (n,), generator=g)
        if label is not None:
            labels[1] = label
        images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
        dataset.write_arrays(folder, split, Arrays(images, labels))


RESUME = ["train-small", "--arch", "tiny-cnn", "--width", "1", "--data", "fashion-mnist", "--data-dir", "fm",
          "--batch-size", "16", "--epochs", "400", "--device", "cpu", "--quiet"]


def make_inputs28() -> dict[str, Any]:
    """Inputs of issue 28's cases: a FIFO, a hard link, a held lock, a killed run's resume states."""
    os.mkfifo("pipe")
    if os.geteuid() == 0:
        os.mknod("mynull", stat.S_IFCHR | 0o600, os.makedev(1, 3))  # in the probe's temp folder only
    os.link("tm.safetensors", "hl.safetensors")
    shutil.copy("tm.safetensors", "x.safetensors")
    _write_idx(Path("fm"))
    _write_idx(Path("bad-labels"), label=164)
    _write_idx(Path("here/data"), n_train=96, n_test=48)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, "held.safetensors"], stdout=subprocess.PIPE, text=True,
                              env=env)
    assert holder.stdout.readline().strip() == "held"
    victim = subprocess.Popen([sys.executable, "-m", "mgtool", *RESUME, "-o", "run.safetensors"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not Path("run.state.pt").exists():
        time.sleep(0.01)
    time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    states = {}
    for name, change in RESUME_CHANGES.items():
        folder = Path(f"resume-{name}")
        folder.mkdir()
        for f in ("run.safetensors", "run.state.pt", "run.metrics.jsonl"):
            shutil.copy(f, folder / f)
        shutil.copytree("fm", folder / "fm")
        state = torch.load(folder / "run.state.pt", weights_only=True)
        change(state, folder)
        torch.save(state, folder / "run.state.pt")
        states[name] = folder
    return {"holder": holder, "states": states}


HOLD = ("import sys, time; from pathlib import Path; from mgtool.safe_write import hold_lock, lock_path\n"
        "with hold_lock(lock_path(Path(sys.argv[1])), 'x'):\n print('held', flush=True); time.sleep(600)")


def _tiny_buffers(state, folder):
    for buffers in state["optimizer"]["state"].values():
        for key in buffers:
            buffers[key] = torch.zeros(1)


def _swap_data(state, folder):
    _write_idx(folder / "fm", seed=1)


RESUME_CHANGES: dict[str, Callable] = {
    "momentum_buffer zeros(1)": _tiny_buffers,
    "junk fingerprint": lambda state, folder: state.__setitem__("fingerprint", "{no"),
    "junk RNG entry": lambda state, folder: state.__setitem__("rng", [{"torch": torch.zeros(3, dtype=torch.uint8)}]),
    "junk lr": lambda state, folder: state["optimizer"]["param_groups"][0].__setitem__("lr", "abc"),
    "changed data files": _swap_data,
}


def meta_text(src: str, dst: str, edit: Callable[[str], str]) -> str:
    save_file(load_file(src), dst, metadata={"mgtool": edit(read_raw_metadata(Path(src))["mgtool"])})
    return dst


def cases28(inputs: dict[str, Any]) -> dict[str, Case]:
    deep = lambda n: lambda t: t[:-1] + ', "x": ' + "[" * n + "]" * n + "}"  # noqa: E731
    width = json.loads(read_raw_metadata(Path("tm.safetensors"))["mgtool"])["arch"]["width"]
    sub = lambda old, new: lambda t: t.replace(old, new, 1)  # noqa: E731
    evil = "\x1b[2J\x1b[31mRED\x1b]0;pwned-title\x07"
    tiny = ["--arch", "tiny-cnn", "--width", "1", "--data", "synthetic", "--epochs", "1", "-o", OUT]
    sd = load_file("plain.safetensors")
    head = next(k for k in sd if sd[k].ndim == 2)
    rv = next(k for k in sd if k.endswith("running_var"))
    for name, value in {"sparse": sd[head].to_sparse(), "meta": torch.empty(sd[head].shape, device="meta"),
                        "nested": torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)])}.items():
        torch.save({**sd, head: value}, f"{name}.pth")
    torch.save({**sd, rv: torch.full_like(sd[rv], float("nan"))}, "nanvar.pth")
    grown = run("fuse", "tm.safetensors", "--factor", "2", "--init-scale", "1e30", "-o", "huge.safetensors")
    assert grown.exit_code == 0, grown.output
    resume = {f"resume: {name}": Case([*RESUME, "-o", "run.safetensors", "--resume"], code=1, process=True,
                                      cwd=str(folder)) for name, folder in inputs["states"].items()}
    c = {
        **resume,
        "export -o FIFO --force": Case(["export", "tm.safetensors", "-o", "pipe", "--force"],
                                      check=lambda: stat.S_ISFIFO(os.stat("pipe").st_mode)),
        "export over a hard link of its input --force": Case(
            ["export", "tm.safetensors", "-o", "hl.safetensors", "--force"],
            check=lambda: Path("hl.safetensors").read_bytes() == Path("tm.safetensors").read_bytes()),
        "fuse a file and its hard link": Case(["fuse", "tm.safetensors", "hl.safetensors", "-o", OUT], code=2),
        "train-small --init-from X -o X --force": Case(
            ["train-small", "--init-from", "x.safetensors", "--data", "synthetic", "--epochs", "1", "-o",
             "x.safetensors", "--force"], check=lambda: Path("x.safetensors").read_bytes() == TM_BYTES[0]),
        "export while a training holds the output's lock": Case(["export", "tm.safetensors", "-o", "held.safetensors"],
                                                                check=lambda: not Path("held.safetensors").exists()),
        "fuse while a training holds the output's lock": Case(
            ["fuse", "tm.safetensors", "--factor", "2", "-o", "held.safetensors"],
            check=lambda: not Path("held.safetensors").exists()),
        "train-small --epochs 0 while a training holds the lock": Case(
            ["train-small", *tiny[:-4], "--epochs", "0", "-o", "held.safetensors"],
            check=lambda: not Path("held.safetensors").exists()),
        "export under ulimit -f": Case(["export", "tm.safetensors", "-o", OUT], code=1, process=True,
                                       limit_file_size=True),
        "run -o . with the data in ./data and a subset": Case(
            ["run", RECIPE, "-o", ".", "--force", "--set", "data.subset.train=64", "--set", "data.subset.test=32"],
            code=1, process=True, cwd="here", check=lambda: _idx_sizes("here/data") == IDX_SIZES[0]),
        "eval NaN logits (negative running_var)": Case([
            "eval", rewrite("tm.safetensors", "negvar.safetensors",
                            tensors=lambda t: t[next(k for k in t if k.endswith("running_var"))].fill_(-1)),
            "--device", "cpu"], code=1),
        "eval Inf logits (--init-scale 1e30)": Case(["eval", "huge.safetensors", "--device", "cpu"], code=1),
        "train on labels >= classes": Case(["train-small", *tiny[:4], "--data", "fashion-mnist", "--data-dir",
                                            "bad-labels", "--epochs", "1", "-q", "-o", OUT], code=1),
        "info: metadata 1e5 levels deep": Case(
            ["info", meta_text("tm.safetensors", "d1.safetensors", deep(100_000)), "--no-flops"], code=1),
        "info --json: metadata 600 levels deep": Case(
            ["info", meta_text("tm.safetensors", "d2.safetensors", deep(600)), "--json", "--no-flops"], code=1),
        "info: width NaN": Case(["info", meta_text("tm.safetensors", "w1.safetensors", sub(
            f'"width": {json.dumps(width)}', '"width": NaN')), "--no-flops"], code=1),
        "info: width Infinity": Case(["info", meta_text("tm.safetensors", "w2.safetensors", sub(
            f'"width": {json.dumps(width)}', '"width": Infinity')), "--no-flops"], code=1),
        "info: width 1e308": Case(["info", meta_text("tm.safetensors", "w3.safetensors", sub(
            f'"width": {json.dumps(width)}', '"width": 1e308')), "--no-flops"], code=1),
        "info: negative tile_shape": Case(["info", rewrite("tm.safetensors", "t1.safetensors", meta=set_meta(
            ["plan", "banks", 0, "tile_shape", 0], -1)), "--no-flops"], code=1),
        "info: templates_per_set 2^62": Case(["info", rewrite("tm.safetensors", "t2.safetensors", meta=set_meta(
            ["plan", "banks", 0, "templates_per_set"], 2**62)), "--no-flops"], code=1),
        "export: flops.training NaN": Case(["export", meta_text("tm.safetensors", "f1.safetensors", sub(
            '"training": 0.0', '"training": NaN')), "-o", OUT], code=1),
        "fuse: flops.training Infinity": Case(["fuse", meta_text("tm.safetensors", "f2.safetensors", sub(
            '"training": 0.0', '"training": Infinity')), "--factor", "2", "-o", OUT], code=1),
        "info: a 50 MB metadata string": Case(["info", rewrite("tm.safetensors", "s1.safetensors", meta=set_meta(
            ["provenance", "command"], ["x" * 50_000_000])), "--no-flops"], code=1),
        "info: escapes in provenance.command": Case(["info", rewrite(
            "tm.safetensors", "esc.safetensors", meta=set_meta(["provenance", "command"], ["mgtool", evil])),
            "--no-flops"], success=True),
        "--like: seed 'abc'": Case(["train-small", "--like", rewrite("tm.safetensors", "k1.safetensors", meta=set_meta(
            ["training"], {"recipe": {"seed": "abc"}})), "--data", "synthetic", "--epochs", "0", "-o", OUT], code=1),
        "--like: seed 1e30": Case(["train-small", "--like", rewrite("tm.safetensors", "k2.safetensors", meta=set_meta(
            ["training"], {"recipe": {"seed": 1e30}})), "--data", "synthetic", "--epochs", "0", "-o", OUT], code=1),
        **{f"convert a {name} tensor": Case(["convert", f"{name}.pth", "--arch", "tiny-cnn", "--width", "1", "-o", OUT],
                                            code=1) for name in ("sparse", "meta", "nested")},
        "convert a NaN running_var": Case(["convert", "nanvar.pth", "--arch", "tiny-cnn", "--width", "1", "-o", OUT],
                                          code=1),
        "convert --opt dropout=NaN": Case(["convert", "w.pth", "--arch", "tiny-cnn", "--width", "1", "--opt",
                                           "dropout=NaN", "-o", OUT], code=2),
        "train-small --epochs nan": Case(["train-small", *tiny[:-4], "--epochs", "nan", "-o", OUT], code=2),
        "export --bogus": Case(["export", "tm.safetensors", "--bogus", "-o", OUT], code=2),
        "fuse with no input": Case(["fuse", "-o", OUT], code=2),
        "--like with --arch": Case(["train-small", "--like", "tm.safetensors", *tiny], code=2),
        "--device nope": Case(["train-small", *tiny, "--device", "nope"], code=2),
        "--data nope": Case(["train-small", *tiny[:4], "--data", "nope", "--epochs", "1", "-o", OUT], code=2),
        "--data fmnist": Case(["train-small", *tiny[:4], "--data", "fmnist", "--epochs", "1", "-o", OUT], code=2),
        "eval --limit 0": Case(["eval", "tm.safetensors", "--limit", "0"], code=2),
        "eval --split bogus": Case(["eval", "tm.safetensors", "--split", "bogus"], code=2),
        "fuse --factor 0": Case(["fuse", "tm.safetensors", "--factor", "0", "-o", OUT], code=2),
        "--budget -1": Case(["train-small", *tiny, "--budget", "-1"], code=2),
        "--in-chans 0": Case(["train-small", *tiny, "--in-chans", "0"], code=2),
        "--num-classes 0": Case(["train-small", *tiny, "--num-classes", "0"], code=2),
    }
    if os.geteuid() == 0:
        c["export -o a device node --force"] = Case(["export", "tm.safetensors", "-o", "mynull", "--force"],
                                                   check=lambda: stat.S_ISCHR(os.stat("mynull").st_mode))
    return c


def _idx_sizes(folder: str) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(Path(folder).iterdir())}


REPO = os.getcwd()
RECIPE = str(Path(REPO) / "recipes" / "fashion-mnist-cpu.yaml")
TM_BYTES: list[bytes] = []
IDX_SIZES: list[dict[str, int]] = []


def judge(case: Case, result: Any) -> bool:
    out = result.stdout + result.stderr
    if "\x1b" in out or "\x07" in out:
        return False
    if case.success:
        return result.exit_code == 0 and (case.check is None or case.check())
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    ok = ((result.exit_code in (1, 2) if case.code is None else result.exit_code == case.code)
          and len(lines) == 1 and lines[0].startswith("error: ") and result.stdout == "" and not Path(OUT).exists()
          and "rerun with --debug" not in lines[0])  # "unexpected X ... --debug" is a bug report
    return ok and (case.check is None or case.check())


def main() -> int:
    torch.set_num_threads(1)
    os.chdir(tempfile.mkdtemp(prefix="mgtool-probe-"))
    make_inputs()
    inputs = make_inputs28()
    TM_BYTES.append(Path("tm.safetensors").read_bytes())
    IDX_SIZES.append(_idx_sizes("here/data"))
    tried: dict[str, Case] = {name: Case(args) for name, args in cases().items()} | cases28(inputs)
    handled = 0
    try:
        for name, case in tried.items():
            result = _process(case) if case.process else run(*case.args)
            ok = judge(case, result)
            handled += ok
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            print(f"{'ok ' if ok else 'BAD'} {name}: exit {result.exit_code}: {lines[-1][:140] if lines else ''}")
    finally:
        inputs["holder"].kill()
    print(f"{len(tried)} cases tried, {handled} handled")
    return 0 if handled == len(tried) else 1


if __name__ == "__main__":
    raise SystemExit(main())
