"""The one way mgtool writes a file (see docs/guide-safety.md).

``check_target`` (when a command starts) and ``write_file`` (when it writes) refuse a target
that is not a regular file (a device node, FIFO, socket or folder), even with ``--force``;
``check_target`` refuses an output that is one of the command's inputs, by inode, so a hard
link is caught too. ``write_file`` holds the output's ``.STEM.lock`` (the lock a training run
holds for its whole run) while it writes; writes a temporary file beside the target; and
publishes it with a no-clobber step (a hard link, or ``renameat2(RENAME_NOREPLACE)``), so a
file that appeared meanwhile is never replaced without ``--force``. A full disk or a file
size limit (``ulimit -f``) is an error naming the file.

Lock files are marked by their content; only marked ones are ever removed, so a user's own
file of the same name is left alone.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import glob
import os
import re
import resource
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mgtool.errors import MgtoolError

LOCK_MARK = b"mgtool lock, pid "
_HELD: set[tuple[int, int]] = set()  # (st_dev, st_ino) of the lock files this process holds
_NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
_NO_SPACE_WORDS = ("no space left", "file too large", "disk quota")
_SLACK = 1 << 20  # bytes: a write that failed this close to a limit ran into it


class Busy(MgtoolError):
    """Another process holds the lock; ``holder`` is its pid as the lock file says ("?" if unknown)."""

    def __init__(self, message: str, holder: str = "?"):
        super().__init__(message)
        self.holder = holder


def lock_path(out: Path) -> Path:
    """``.STEM.lock`` beside ``out`` (STEM: the name less ``.safetensors``), as a training run names it."""
    name = out.name
    stem = name[: -len(".safetensors")] if name.endswith(".safetensors") and name != ".safetensors" else name
    return out.with_name(f".{stem}.lock")


@contextmanager
def hold_lock(lock_file: Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` (created if missing), or fail at once naming its holder.

    Not re-entrant: a second claim, in this process or another, is refused."""
    lock_file = Path(lock_file)
    while True:
        created = True
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except FileExistsError:
            created = False
            try:
                fd = os.open(lock_file, os.O_RDWR | os.O_NOFOLLOW | os.O_NONBLOCK)
            except FileNotFoundError:
                continue  # its holder removed it meanwhile
            except OSError as e:
                raise MgtoolError(f"{lock_file}: cannot open the lock file of {what} ({e.strerror}); "
                                  "move it away") from None
        except OSError as e:
            raise MgtoolError(f"{lock_file}: cannot create the lock file of {what} ({e.strerror})") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise MgtoolError(f"{lock_file}: is not a regular file, and mgtool uses this name as the lock of "
                              f"{what}; move it away")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise Busy(f"{what}: in use by another process (pid {holder}); wait for it to end "
                       "or choose another output", holder) from None
        if _identity(lock_file) == (st.st_dev, st.st_ino):
            break
        os.close(fd)  # its holder removed it between our open and our lock: take the new one
    ours = created or os.pread(fd, len(LOCK_MARK), 0) == LOCK_MARK
    if ours:
        os.ftruncate(fd, 0)
        os.pwrite(fd, LOCK_MARK + f"{os.getpid()}\n".encode(), 0)
    key = (st.st_dev, st.st_ino)
    _HELD.add(key)
    try:
        yield
    finally:
        _HELD.discard(key)
        if ours and _identity(lock_file) == key:
            lock_file.unlink(missing_ok=True)  # still locked: nobody can be between open and lock on it
        os.close(fd)  # closing the descriptor releases the lock


def _holder(fd: int) -> str:
    text = os.pread(fd, 64, 0)
    return text[len(LOCK_MARK):].decode(errors="replace").strip() or "?" if text.startswith(LOCK_MARK) else "?"


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def file_identity(path: Path | str) -> tuple[int, int] | None:
    """(device, inode) of the file ``path`` names (links followed); None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold ``out``'s ``.STEM.lock`` unless this process holds it already (a training run writing)."""
    lock = lock_path(out)
    if _identity(lock) in _HELD:
        yield
        return
    with hold_lock(lock, str(out)):
        yield


def make_parent(path: Path) -> None:
    """Create ``path``'s folder and its parents; a clear error if that is impossible."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise MgtoolError(f"{path.parent}: cannot be the output folder (a part of it is a file)") from None
    except OSError as e:
        raise MgtoolError(f"{path.parent}: cannot create the output folder ({e.strerror or e})") from None


def check_input_file(path: Path, what: str = "a checkpoint file") -> None:
    """An input must be a regular file: reading a FIFO or a device would block or never end."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MgtoolError(f"{path}: no such file") from None
    except OSError as e:
        raise MgtoolError(f"{path}: cannot read it ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise MgtoolError(f"{path}: is a directory, expected {what}")
    if not stat.S_ISREG(st.st_mode):
        raise MgtoolError(f"{path}: is not a regular file (a FIFO, device or socket), expected {what}")


def check_not_an_input(path: Path | str, inputs: Iterable[Path | str | None]) -> None:
    """Refuse an output that is one of ``inputs``: the same file by inode, so hard and
    symbolic links are caught as well as equal paths."""
    mine = file_identity(path)
    for src in inputs:
        if mine is not None and src is not None and file_identity(src) == mine:
            raise MgtoolError(f"{path}: is the input {src} (the same file, perhaps by a link); "
                              "the output must differ from every input")


def check_target(path: Path | str, force: bool, inputs: Iterable[Path | str] = (), *, lock: bool = True) -> Path:
    """Refuse an output that is not a regular file (even with ``force``), one of ``inputs`` (by
    inode), an existing one without ``force``, or (``lock``) one whose lock another process
    holds; create its folder. ``lock=False`` is for DDP ranks that never write."""
    path = Path(path)
    _check_existing(path, force, inputs)
    make_parent(path)
    if lock:
        with output_lock(path):
            pass
    return path


def _check_existing(path: Path, force: bool, inputs: Iterable[Path | str | None] = ()) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise MgtoolError(f"{path}: cannot be the output ({e.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        raise MgtoolError(f"{path}: is a directory; give a file name such as {path / 'model.safetensors'}")
    if not stat.S_ISREG(st.st_mode):
        raise MgtoolError(f"{path}: is not a regular file (a device, FIFO or socket); mgtool never replaces "
                          "one, even with --force; choose another -o")
    check_not_an_input(path, inputs)
    if not force:
        raise MgtoolError(f"{path}: already exists; pass --force to overwrite it")


def write_file(path: Path | str, write: Callable[[str], Any], *, force: bool) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then publish it as ``path``
    (see the module docstring). A file that is replaced keeps its mode; a new one gets the
    usual mode (0666 less the umask)."""
    path = Path(path)
    _check_existing(path, force)
    make_parent(path)
    with output_lock(path):
        remove_stale_tmp(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            try:
                write(tmp)
            except Exception as e:
                _raise_if_no_space(e, path, tmp)
                raise
            try:
                mode = os.stat(path).st_mode & 0o7777
            except FileNotFoundError:
                mode = 0o666 & ~_umask()  # mkstemp makes 0600
            os.chmod(tmp, mode)
            _publish(tmp, path, force)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def remove_stale_tmp(path: Path) -> list[Path]:
    """Delete ``.NAME.XXXXXXXX.tmp`` files of ``path`` that killed writes left (the lock held:
    no live writer of ``path`` can own one)."""
    pattern = re.compile(rf"\.{re.escape(path.name)}\.[A-Za-z0-9_]{{8}}\.tmp\Z")
    removed = []
    for p in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if pattern.match(p.name) and p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def _raise_if_no_space(e: Exception, path: Path, tmp: str) -> None:
    """A failed write that ran out of room becomes an error naming ``path``: writers such as
    torch.save report it only as a stream error."""
    reason = _no_space_reason(e, tmp)
    if reason is not None:
        raise MgtoolError(f"{path}: cannot write it: {reason}; nothing written; free space, raise the "
                          "limit or choose another -o") from None


def _no_space_reason(e: Exception, tmp: str) -> str | None:
    try:
        size = os.stat(tmp).st_size
        room = os.statvfs(os.path.dirname(tmp) or ".")
    except OSError:
        size, room = 0, None
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and size + _SLACK >= limit:
        return f"the file size limit (ulimit -f) of {limit} bytes was reached"
    if (room is not None and room.f_bavail * room.f_frsize < _SLACK) or (
            isinstance(e, OSError) and e.errno in _NO_SPACE) or any(w in str(e).lower() for w in _NO_SPACE_WORDS):
        return "no space left on the device (or the quota is spent)"
    return None


def _publish(tmp: str, path: Path, force: bool) -> None:
    _check_existing(path, force=True)  # again: it may have become a FIFO, a device or a folder meanwhile
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _appeared(path) from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
            raise
        if not _rename_noreplace(tmp, path):  # a file system without hard links
            if os.path.lexists(path):
                raise _appeared(path) from None
            os.replace(tmp, path)
        return
    os.unlink(tmp)


def _appeared(path: Path) -> MgtoolError:
    return MgtoolError(f"{path}: appeared while mgtool was writing it; nothing replaced (pass --force to "
                       "overwrite it)")


def _rename_noreplace(src: str, dst: Path) -> bool:
    """``renameat2(RENAME_NOREPLACE)`` where libc has it; False where it does not."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, noreplace = -100, 1
    if renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(str(dst)), noreplace) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        raise _appeared(dst)
    if err in (errno.EINVAL, errno.ENOSYS):
        return False
    raise OSError(err, os.strerror(err), str(dst))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
