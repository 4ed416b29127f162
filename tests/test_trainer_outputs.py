"""The trainer's file rules: nothing non-finite written, nothing lost on failure, one run per output,
stale temporaries removed, resume states checked (issue: hardening, section 1 and 3)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from mgtool.archs import ArchSpec, build_plain, resolve_spec
from mgtool.data import data_config
from mgtool.errors import MgtoolError
from mgtool.train import Lineage, Runtime, fit, run_paths, train_config
from mgtool.train.outputs import output_lock
from mgtool.train.state import load_state, save_state
from mgtool.train.trainer import Trainer

SPEC = resolve_spec(ArchSpec("tiny-cnn", 1.0, 10, 3))
DATA = data_config("synthetic", options={"shape": "3x16x16", "train_size": 64, "test_size": 32})
RUNTIME = Runtime(device="cpu", quiet=True)


def _fit(out: Path, model=None, epochs: int = 1, **kw):
    torch.manual_seed(0)
    model = model or build_plain(SPEC)
    cfg = train_config("synthetic", epochs=epochs, batch_size=16, warmup_epochs=0, lr=kw.pop("lr", 0.05))
    return fit(model, Lineage("train-scratch", "plain", SPEC, None), DATA, cfg, RUNTIME, out, **kw)


def test_an_infinite_batchnorm_statistic_stops_training_and_writes_nothing(tmp_path):
    model = build_plain(SPEC)

    def blow_up(m, inputs):  # what a too-large lr does to BatchNorm's running variance
        if m.training:
            m.running_var.fill_(math.inf)

    model.bn1.register_forward_pre_hook(blow_up)
    out = tmp_path / "inf.safetensors"
    with pytest.raises(MgtoolError, match="bn1.running_var"):
        _fit(out, model)
    assert not out.exists() and not run_paths(out).metrics.exists()


def test_force_then_a_nan_stop_keeps_the_earlier_run(tmp_path):
    out = tmp_path / "net.safetensors"
    _fit(out)
    before = out.read_bytes(), run_paths(out).metrics.read_bytes()
    with pytest.raises(MgtoolError, match="untouched"):
        _fit(out, lr=1e6, force=True)
    assert (out.read_bytes(), run_paths(out).metrics.read_bytes()) == before


def test_one_run_per_output(tmp_path):
    out = tmp_path / "net.safetensors"
    with output_lock(run_paths(out)), pytest.raises(MgtoolError, match="another mgtool run"):
        _fit(out)
    _fit(out)  # the lock is released with its holder
    assert out.exists()


def test_stale_temporaries_of_killed_writes_are_removed(tmp_path):
    out = tmp_path / "net.safetensors"
    stale = [tmp_path / ".net.safetensors.x1y2.tmp", tmp_path / ".net.state.pt.ab.tmp"]
    other = tmp_path / ".other.safetensors.zz.tmp"
    for p in [*stale, other]:
        p.write_bytes(b"partial")
    _fit(out)
    assert not any(p.exists() for p in stale) and other.exists()


def _interrupted(out: Path, monkeypatch) -> Path:
    """A 2-epoch run killed after its first epoch was written: the resume state stays."""
    real = Trainer.save

    def save_then_die(self, *a, **k):
        real(self, *a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        _fit(out, epochs=2)
    monkeypatch.setattr(Trainer, "save", real)
    return run_paths(out).state


@pytest.mark.parametrize("field, value", [("epoch", -5), ("step", -1), ("epoch", 7), ("metrics", [])])
def test_an_inconsistent_resume_state_is_refused(tmp_path, monkeypatch, field, value):
    out = tmp_path / "net.safetensors"
    state_path = _interrupted(out, monkeypatch)
    state = load_state(state_path)
    state[field] = value
    save_state(state_path, {k: v for k, v in state.items() if k != "format"})
    with pytest.raises(MgtoolError, match="inconsistent"):
        _fit(out, epochs=2, resume=True)


def test_a_consistent_resume_state_resumes(tmp_path, monkeypatch):
    out = tmp_path / "net.safetensors"
    _interrupted(out, monkeypatch)
    result = _fit(out, epochs=2, resume=True)
    assert [r["epoch"] for r in result.history] == [1, 2] and not run_paths(out).state.exists()
