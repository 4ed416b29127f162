"""Real processes: resume after SIGKILL ends with the same weights; DDP over 2 gloo processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mgtool.checkpoint import read_meta
from mgtool.train import run_paths

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TINY = ["--arch", "tiny-cnn", "--width", "1", "--data", "synthetic", "--data-opt", "shape=3x16x16",
        "--data-opt", "train_size=128", "--data-opt", "test_size=32", "--batch-size", "16",
        "--device", "cpu", "--quiet"]


def mgtool(*args) -> list[str]:
    return [sys.executable, "-m", "mgtool", *map(str, args)]


def _weights_equal(a: Path, b: Path) -> None:
    ta, tb = load_file(a), load_file(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key


def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path):
    epochs = "12"
    ref, run = tmp_path / "ref.safetensors", tmp_path / "run.safetensors"
    reference = subprocess.Popen(mgtool("train-small", *TINY, "--epochs", epochs, "-o", ref), env=ENV,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    victim = subprocess.Popen(mgtool("train-small", *TINY, "--epochs", epochs, "-o", run), env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics = run_paths(run).metrics
    deadline = time.time() + 120
    while time.time() < deadline and victim.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
            victim.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    assert victim.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert run_paths(run).state.exists() and not read_meta(run).training["complete"]
    resumed = subprocess.run(mgtool("train-small", *TINY, "--epochs", epochs, "--resume", "-o", run),
                             env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert reference.wait() == 0, reference.stderr.read()
    _weights_equal(ref, run)
    lines = [[json.loads(s) for s in run_paths(p).metrics.read_text().splitlines()] for p in (ref, run)]
    assert [r["test_top1"] for r in lines[0]] == [r["test_top1"] for r in lines[1]]
    assert [r["epoch"] for r in lines[1]] == list(range(1, 13))
    assert read_meta(run).flops.training == read_meta(ref).flops.training
    assert not run_paths(run).state.exists()


def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    # tiny-mlp has no BatchNorm and augmentation is off, so 2 x 16 under DDP (gradients
    # averaged) computes what one process does with batches of 32, up to float rounding.
    args = ["--arch", "tiny-mlp", "--width", "1", "--data", "synthetic", "--data-opt", "shape=3x8x8",
            "--data-opt", "train_size=128", "--data-opt", "test_size=32", "--data-opt", "crop_padding=0",
            "--data-opt", "flip=false", "--batch-size", "32", "--warmup", "0", "--epochs", "2",
            "--device", "cpu", "--quiet"]
    ddp, single = tmp_path / "ddp" / "net.safetensors", tmp_path / "single.safetensors"
    ddp.parent.mkdir()
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "mgtool", "train-small", *args, "-o", str(ddp)]
    p_ddp = subprocess.Popen(launch, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    p_one = subprocess.run(mgtool("train-small", *args, "-o", single), env=ENV, capture_output=True,
                           text=True)
    out, err = p_ddp.communicate(timeout=300)
    assert p_ddp.returncode == 0, err
    assert p_one.returncode == 0, p_one.stderr
    assert out.strip().splitlines() == [str(ddp)]  # only rank 0 prints
    assert sorted(p.name for p in ddp.parent.iterdir()) == ["net.metrics.jsonl", "net.safetensors"]
    assert len(run_paths(ddp).metrics.read_text().splitlines()) == 2
    m_ddp, m_one = read_meta(ddp), read_meta(single)
    assert m_ddp.training["world_size"] == 2 and m_ddp.training["samples_seen"] == m_one.training["samples_seen"]
    ta, tb = load_file(ddp), load_file(single)
    for key in ta:
        torch.testing.assert_close(ta[key], tb[key], rtol=1e-4, atol=1e-6)
    assert m_ddp.training["test_top1"] == pytest.approx(m_one.training["test_top1"], abs=1 / 32)
