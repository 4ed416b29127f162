"""Issue 28, items 2-4, 6, 7, 10, 13, 16: every output goes through ``safe_write.write_file``.

FIFOs and device nodes are made only inside tmp_path; nothing here touches /dev."""

from __future__ import annotations

import os
import resource
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mgtool.cli import app
from mgtool.errors import MgtoolError
from mgtool.safe_write import LOCK_MARK, hold_lock, lock_path, write_file

from .conftest import one_line as _one_line

runner = CliRunner()
SMALL = ["--arch", "tiny-cnn", "--width", "1", "--data", "synthetic", "--data-opt", "shape=3x16x16",
         "--data-opt", "train_size=32", "--data-opt", "test_size=16", "--batch-size", "16", "--quiet",
         "--device", "cpu"]


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_force_never_replaces_a_fifo(tm, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    line = _one_line(_run("export", tm, "-o", fifo, "--force"))
    assert "not a regular file" in line and stat.S_ISFIFO(os.stat(fifo).st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a character device needs root")
def test_force_never_replaces_a_device_node(tm, tmp_path):
    node = tmp_path / "mynull"  # inside tmp_path only: the machine's /dev is never touched
    os.mknod(node, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    line = _one_line(_run("export", tm, "-o", node, "--force"))
    assert "not a regular file" in line and stat.S_ISCHR(os.stat(node).st_mode)


def test_a_file_that_appears_while_writing_is_never_replaced_without_force(tmp_path):
    target = tmp_path / "out.bin"

    def racing_write(tmp: str) -> None:
        Path(tmp).write_bytes(b"mine")
        target.write_bytes(b"theirs")  # another writer published first

    with pytest.raises(MgtoolError, match="appeared while mgtool was writing it"):
        write_file(target, racing_write, force=False)
    assert target.read_bytes() == b"theirs" and list(tmp_path.glob(".*.tmp")) == []
    write_file(target, lambda tmp: Path(tmp).write_bytes(b"mine"), force=True)
    assert target.read_bytes() == b"mine"


HOLD = ("import sys, time; from pathlib import Path; from mgtool.safe_write import hold_lock, lock_path\n"
        "with hold_lock(lock_path(Path(sys.argv[1])), 'x'):\n print('held', flush=True); time.sleep(60)")


@pytest.mark.parametrize("command", ["export", "fuse", "convert", "train-small"])
def test_writers_honour_a_running_trainings_lock(command, tm, plain_ckpts, tmp_path):
    out = tmp_path / "lk.safetensors"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        args = {"export": ["export", tm], "fuse": ["fuse", tm, "--factor", "2"],
                "convert": ["convert", plain_ckpts["tiny-cnn"], "--arch", "tiny-cnn", "--width", "1"],
                "train-small": ["train-small", *SMALL, "--epochs", "0"]}[command]
        line = _one_line(_run(*args, "-o", out))
        assert f"pid {holder.pid}" in line and not out.exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_users_own_lock_named_file_is_never_deleted(tm, tmp_path):
    out = tmp_path / "o.safetensors"
    mine = lock_path(out)
    mine.write_text("my notes\n")
    assert _run("export", tm, "-o", out).exit_code == 0
    assert _run("train-small", *SMALL, "--epochs", "1", "-o", tmp_path / "o2.safetensors").exit_code == 0
    other = lock_path(tmp_path / "o3.safetensors")
    other.write_text("keep\n")
    assert _run("train-small", *SMALL, "--epochs", "1", "-o", tmp_path / "o3.safetensors").exit_code == 0
    assert mine.read_text() == "my notes\n" and other.read_text() == "keep\n"
    assert not lock_path(tmp_path / "o2.safetensors").exists()  # mgtool's own lock files go


def test_a_killed_holders_marked_lock_file_is_reused_and_removed(tmp_path):
    lock = tmp_path / ".x.lock"
    lock.write_bytes(LOCK_MARK + b"99999\n")  # left by a killed mgtool
    with hold_lock(lock, "x"):
        assert lock.read_bytes() == LOCK_MARK + f"{os.getpid()}\n".encode()
    assert not lock.exists()


def test_a_hard_link_is_the_same_file(tm, tmp_path):
    hard = tmp_path / "hard.safetensors"
    os.link(tm, hard)
    line = _one_line(_run("fuse", tm, hard, "-o", tmp_path / "g.safetensors"), code=2)
    assert "given twice" in line
    before = tm.read_bytes()
    line = _one_line(_run("export", tm, "-o", hard, "--force"))
    assert "is the input" in line and tm.read_bytes() == before


def test_train_small_refuses_its_init_from_as_output(tm, tmp_path):
    x = tmp_path / "x.safetensors"
    x.write_bytes(tm.read_bytes())
    line = _one_line(_run("train-small", *SMALL[4:], "--init-from", x, "--epochs", "1", "-o", x, "--force"))
    assert "is the input" in line and x.read_bytes() == tm.read_bytes()


def _limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_a_file_size_limit_names_the_file(tm, tmp_path, suffix):
    out = tmp_path / f"o{suffix}"
    code = ("import sys, torch; from pathlib import Path; from mgtool.checkpoint import save_checkpoint, read_meta\n"
            "from mgtool.safe_write import write_file\n"
            "from mgtool.errors import MgtoolError\n"
            "out = Path(sys.argv[2])\n"
            "def main():\n"
            "    if out.suffix == '.pt':\n"
            "        write_file(out, lambda t: torch.save(torch.zeros(100000), t), force=False)\n"
            "    else:\n"
            "        save_checkpoint(out, {'w': torch.zeros(100000)}, read_meta(sys.argv[1]), force=False)\n"
            "try:\n    main()\nexcept MgtoolError as e:\n    sys.exit(f'error: {e}')\n")
    r = subprocess.run([sys.executable, "-c", code, str(tm), str(out)], capture_output=True, text=True,
                       preexec_fn=_limit_file_size)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert str(out) in lines[0] and "ulimit -f" in lines[0] and "nothing written" in lines[0]
    assert not out.exists() and list(tmp_path.glob(".*.tmp")) == []


def test_stale_zero_byte_temporaries_of_an_output_are_removed(tm, tmp_path):
    out = tmp_path / "o.safetensors"
    stale = tmp_path / ".o.safetensors.ab12_XYZ.tmp"
    stale.write_bytes(b"")
    other = tmp_path / ".other.safetensors.ab12_XYZ.tmp"
    other.write_bytes(b"")
    assert _run("export", tm, "-o", out).exit_code == 0
    assert not stale.exists() and other.exists()


@pytest.mark.parametrize("command", ["info", "convert", "run"])
def test_a_fifo_as_input_is_refused_not_read(tmp_path, command):
    fifo = tmp_path / "in.pipe"
    os.mkfifo(fifo)
    args = {"info": ["info", fifo], "convert": ["convert", fifo, "--arch", "tiny-cnn", "--width", "1", "-o",
                                                tmp_path / "o.safetensors"],
            "run": ["run", fifo, "-o", tmp_path / "run"]}[command]
    r = subprocess.run([sys.executable, "-m", "mgtool", *map(str, args)], capture_output=True, text=True,
                       timeout=120)  # before the fix the read blocked for ever
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "is not a regular file" in lines[0], r.stderr
