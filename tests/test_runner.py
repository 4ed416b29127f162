"""The runner: fingerprinted stages (skip, rerun, resume), the folder lock, file ownership, stale tmp files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mgtool.checkpoint import atomic_write
from mgtool.errors import MgtoolError
from mgtool.runner import LEDGER_FORMAT, FolderBusy, Ledger, Stage, hold_lock


def writer(calls: list[tuple[str, bool]], text: str = "out"):
    def work(out: Path, resume: bool) -> None:
        calls.append((out.name, resume))
        atomic_write(out, lambda tmp: Path(tmp).write_text(text))
    return work


def test_stage_skips_when_done_and_reruns_on_change(tmp_path: Path) -> None:
    src = tmp_path / "input.txt"
    src.write_text("a")
    out = tmp_path / "run"
    calls: list = []
    stage = Stage("s", out / "s.txt", {"x": 1}, {"src": src})
    with Ledger(out) as ledger:
        assert ledger.run(stage, writer(calls)).status == "ran"
        assert ledger.run(stage, writer(calls)).status == "skipped"
        assert ledger.run(Stage("s", out / "s.txt", {"x": 2}, {"src": src}), writer(calls)).status == "ran"
    src.write_text("b")  # an input's content changed
    with Ledger(out) as ledger:
        assert ledger.run(Stage("s", out / "s.txt", {"x": 2}, {"src": src}), writer(calls)).status == "ran"
        (out / "s.txt").write_text("damaged")  # an output that is no longer what the stage wrote
        with pytest.raises(MgtoolError, match="changed since this pipeline wrote it"):
            ledger.run(Stage("s", out / "s.txt", {"x": 2}, {"src": src}), writer(calls))
    assert len(calls) == 3


def test_interrupted_stage_resumes_only_with_its_state_and_fingerprint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    state = out / "s.state"
    calls: list = []
    with Ledger(out) as ledger:
        def killed(o: Path, resume: bool) -> None:
            state.write_text("half")
            raise KeyboardInterrupt
        with pytest.raises(KeyboardInterrupt):
            ledger.run(Stage("s", out / "s.txt", {}, {}, (state,), state), killed)
    assert json.loads((out / "pipeline.json").read_text())["stages"]["s"]["status"] == "running"
    with Ledger(out) as ledger:
        assert ledger.run(Stage("s", out / "s.txt", {}, {}, (state,), state), writer(calls)).status == "resumed"
    assert calls == [("s.txt", True)]
    with Ledger(out) as ledger:  # a changed fingerprint starts over instead
        ledger.data["stages"]["s"]["status"] = "running"
        assert ledger.run(Stage("s", out / "s.txt", {"new": 1}, {}, (state,), state), writer(calls)).status == "ran"
    assert calls[-1] == ("s.txt", False)


def test_files_the_runner_did_not_write_are_refused_without_force(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("mine")
    (out / "s.metrics.jsonl").write_text("mine too")
    with Ledger(out) as ledger:
        with pytest.raises(MgtoolError, match="not written by this pipeline"):
            ledger.write_text(out / "summary.json", "{}")
        with pytest.raises(MgtoolError, match="s.metrics.jsonl: exists and was not written"):
            ledger.run(Stage("s", out / "s.txt", {}, {}, (out / "s.metrics.jsonl",)), writer([]))
    assert (out / "summary.json").read_text() == "mine" and not (out / "s.txt").exists()
    with Ledger(out, force=True) as ledger:
        ledger.write_text(out / "summary.json", "{}")
    with Ledger(out) as ledger:  # now owned: replaced freely
        ledger.write_text(out / "summary.json", "{1}")
        with pytest.raises(MgtoolError, match="outside"):
            ledger.claim(tmp_path / "elsewhere.txt")


def test_a_foreign_or_corrupt_ledger_is_not_adopted_without_force(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "pipeline.json").write_text(json.dumps({"stages": {"s": {"output": "s.txt", "status": "done"}}}))
    with pytest.raises(MgtoolError, match="not written by mgtool's runner"), Ledger(out):
        pass
    with Ledger(out, force=True) as ledger:  # adopted: its outputs become the runner's
        assert ledger.owns(out / "s.txt") and ledger.entry("s") is not None
    assert json.loads((out / "pipeline.json").read_text())["format"] == LEDGER_FORMAT
    (out / "pipeline.json").write_text("{not json")
    with pytest.raises(MgtoolError, match="corrupt"), Ledger(out):
        pass


def test_a_file_is_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "run").write_text("x")
    with pytest.raises(MgtoolError, match="is a file"), Ledger(tmp_path / "run"):
        pass


def test_one_process_per_folder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with Ledger(out), pytest.raises(FolderBusy, match=f"pid {os.getpid()}"), Ledger(out):
        pass
    with Ledger(out):  # released on exit
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    code = ("import sys, time; from mgtool.runner import hold_lock; from pathlib import Path\n"
            "with hold_lock(Path(sys.argv[1]), 'x'):\n print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(FolderBusy, match=f"pid {proc.pid}"), hold_lock(lock, "x"):
            pass
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 5
    while True:
        try:
            with hold_lock(lock, "x"):
                break
        except FolderBusy:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_stale_tmp_files_of_owned_files_are_removed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with Ledger(out) as ledger:
        ledger.run(Stage("s", out / "s.txt", {}, {}, (out / "s.state",)), writer([]))
    stale = [out / ".s.txt.abc123.tmp", out / ".s.state.x.tmp", out / ".pipeline.json.q.tmp"]
    foreign = out / ".other.txt.abc.tmp"
    for p in (*stale, foreign):
        p.write_text("left by a killed write")
    with Ledger(out):
        pass
    assert not any(p.exists() for p in stale) and foreign.exists()


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path: Path) -> None:
    path = tmp_path / "secret.json"
    path.write_text("old")
    path.chmod(0o600)
    atomic_write(path, lambda tmp: Path(tmp).write_text("new"))
    assert path.read_text() == "new" and path.stat().st_mode & 0o777 == 0o600
    fresh = tmp_path / "fresh.json"
    atomic_write(fresh, lambda tmp: Path(tmp).write_text("x"))
    umask = os.umask(0)
    os.umask(umask)
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~umask


def test_log_lines_are_plain_text(tmp_path: Path) -> None:
    """The runner sends no Rich markup: the CLI prints its lines literally (names may hold [...])."""
    lines: list[str] = []
    stage = Stage("s[v2]", tmp_path / "run" / "s.txt", {}, {})
    with Ledger(tmp_path / "run", log=lines.append) as ledger:
        ledger.run(stage, writer([]))
        ledger.run(stage, writer([]))
    assert lines == ["s[v2]: running -> s.txt", "s[v2]: up to date, skipped (s.txt)"]
