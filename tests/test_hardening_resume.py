"""Issue 28, items 1 and 8: a crafted resume state is refused before any of it reaches the
(fused) optimizer, and a run resumed on changed data is refused, naming the files."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mgtool.data import Arrays, get_dataset
from mgtool.train import run_paths

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONMALLOC": "debug"}


def _data(folder: Path, seed: int = 0) -> Path:
    """A tiny Fashion-MNIST-format data set (64 train, 32 test images) in ``folder``."""
    g = torch.Generator().manual_seed(seed)
    dataset = get_dataset("fashion-mnist")
    for split, n in (("train", 64), ("test", 32)):
        images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g)
        dataset.write_arrays(folder, split, Arrays(images, torch.randint(0, 10, (n,), generator=g)))
    return folder


def _args(data: Path, optimizer: str) -> list[str]:
    extra = ["--optimizer", "adamw", "--lr", "0.001"] if optimizer == "adamw" else []
    return ["train-small", "--arch", "tiny-cnn", "--width", "1", "--data", "fashion-mnist", "--data-dir", str(data),
            "--batch-size", "16", "--epochs", "400", "--device", "cpu", "--quiet", *extra]


def _mgtool(*args) -> list[str]:
    return [sys.executable, "-m", "mgtool", *map(str, args)]


@pytest.fixture(scope="module", params=["sgd", "adamw"])
def killed(request, tmp_path_factory) -> tuple[Path, list[str]]:
    """A run killed after its first epoch: its folder and the command that resumes it."""
    folder = tmp_path_factory.mktemp(f"killed-{request.param}")
    args = _args(_data(folder / "data"), request.param)
    out = folder / "run.safetensors"
    env = {k: v for k, v in ENV.items() if k != "PYTHONMALLOC"}
    victim = subprocess.Popen(_mgtool(*args, "-o", out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and victim.poll() is None:
        if run_paths(out).state.exists():
            time.sleep(0.05)
            victim.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert victim.wait() == -signal.SIGKILL
    return folder, args


def _copy(killed, tmp_path: Path) -> tuple[Path, list[str]]:
    folder, args = killed
    shutil.copytree(folder, tmp_path / "w")
    args = [a.replace(str(folder), str(tmp_path / "w")) for a in args]
    return tmp_path / "w" / "run.safetensors", args


def _edit_state(out: Path, change) -> None:
    path = run_paths(out).state
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


def _resume(out: Path, args: list[str], *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(_mgtool(*args, "-o", out, "--resume", *extra), env=ENV, capture_output=True, text=True,
                          timeout=300)


def _one_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-2000:]
    return lines[0]


def _tiny_buffers(state):
    for buffers in state["optimizer"]["state"].values():
        for name in buffers:
            if name != "step":
                buffers[name] = torch.zeros(1)


def _junk_fingerprint(state):
    state["fingerprint"] = "{not json"


def _junk_rng(state):
    state["rng"] = [{"torch": torch.zeros(3, dtype=torch.uint8)}]


def _junk_step(state):
    next(iter(state["optimizer"]["state"].values()))["step"] = "abc"


def _junk_lr(state):
    state["optimizer"]["param_groups"][0]["lr"] = "abc"


def _wrong_model(state):
    key = next(iter(state["model"]))
    state["model"][key] = torch.zeros(1)


@pytest.mark.parametrize("change, words", [
    (_tiny_buffers, "has shape (1,)"),
    (_junk_fingerprint, "fingerprint"),
    (_junk_rng, "rng entry 0"),
    (_junk_step, "step"),
    (_junk_lr, "lr"),
    (_wrong_model, "model tensor"),
])
def test_a_crafted_resume_state_is_one_line_exit_1(killed, tmp_path, change, words):
    out, args = _copy(killed, tmp_path)
    if change is _junk_step and "adamw" not in args:
        pytest.skip("SGD keeps no step count")
    before = out.read_bytes()
    _edit_state(out, change)
    line = _one_line(_resume(out, args))  # PYTHONMALLOC=debug: heap damage would abort, not exit 1
    assert "resume state is damaged" in line and words in line, line
    assert out.read_bytes() == before


def test_resume_on_changed_data_is_refused_naming_the_files(killed, tmp_path):
    out, args = _copy(killed, tmp_path)
    _data(tmp_path / "w" / "data", seed=1)  # the same file names, other images and labels
    line = _one_line(_resume(out, args))
    assert "the data changed" in line and "train-images-idx3-ubyte" in line and "--force" in line
