"""The files a training run owns next to OUT, and the rules for touching them.

* one run per OUT at a time: a lock file ``.OUT-stem.lock`` held for the whole run;
* OUT, its resume state, metrics and epoch copies are replaced only with ``--force`` or
  ``--resume``, and an earlier run's files are removed only once the new run has finished
  its first epoch (a run that fails before that leaves them as they were);
* leftovers of killed writes (``.NAME.*.tmp``) are removed while the lock is held;
* a resume state is checked before it is trusted.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mgtool.checkpoint import CheckpointMeta, atomic_write, check_output_path, save_checkpoint
from mgtool.errors import MgtoolError
from mgtool.safe_write import Busy, hold_lock, lock_path
from mgtool.train.paths import RunPaths
from mgtool.train.state import load_state, save_state


@contextmanager
def output_lock(paths: RunPaths) -> Iterator[None]:
    """Hold ``.OUT-stem.lock`` beside OUT; a second run on the same OUT, or any other mgtool
    command writing OUT, is refused at once."""
    try:
        with hold_lock(lock_path(paths.out), str(paths.out)):
            yield
    except Busy as e:
        raise MgtoolError(f"{paths.out}: another mgtool run (pid {e.holder}) is writing it now; wait for it to "
                          "finish or choose another -o") from None


def remove_stale_temporaries(paths: RunPaths) -> list[Path]:
    """Delete ``.NAME.*.tmp`` files that killed writes of this run's files left (lock held)."""
    names = {paths.out.name, paths.state.name, paths.metrics.name}
    removed = []
    for p in paths.out.parent.glob(".*.tmp"):
        owner = p.name[1:].rsplit(".", 2)[0]
        if owner in names or owner.startswith(f"{paths.stem}.epoch"):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def previous_files(paths: RunPaths) -> list[Path]:
    """An earlier run's files that a new run replaces (OUT itself excluded)."""
    return [p for p in (paths.state, paths.metrics) if p.exists()] + [p for _, p in paths.epoch_files()]


def prepare_output(paths: RunPaths, *, resume: bool, force: bool, main: bool = True) -> dict[str, Any] | None:
    """Apply the resume/overwrite rules; returns the resume state to continue from, if any.
    ``main``: this process writes (and holds the output's lock); other DDP ranks only read."""
    out = paths.out
    if paths.state.exists():
        if resume:
            check_output_path(out, force=True, lock=main)
            return load_state(paths.state)
        if not force:
            raise MgtoolError(f"{paths.state}: an interrupted run of {out} left its resume state here; "
                              "pass --resume to continue it, or --force to start over")
    elif resume and out.exists():
        raise MgtoolError(f"{out}: nothing to resume (no {paths.state.name} beside it: the run finished); "
                          "pass --force without --resume to train again")
    check_output_path(out, force, lock=main)
    leftovers = previous_files(paths)
    if leftovers and not force:
        raise MgtoolError(f"{leftovers[0]}: left by an earlier run of {out}; pass --force to replace it")
    return None


def check_state(state: dict[str, Any], paths: RunPaths, *, epochs: int, steps_per_epoch: int, world: int) -> None:
    """Refuse a resume state whose counters cannot come from a run of this recipe."""
    try:
        epoch, step, samples = int(state["epoch"]), int(state["step"]), int(state["samples_seen"])
        saved_world, metrics = int(state["world"]), state["metrics"]
        ok = (0 <= epoch < epochs and 0 <= step <= epoch * steps_per_epoch and samples >= 0
              and saved_world >= 1 and isinstance(metrics, list) and len(metrics) == epoch
              and isinstance(state["model"], dict) and isinstance(state["optimizer"], dict)
              and isinstance(state["rng"], list) and len(state["rng"]) == saved_world)
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise MgtoolError(f"{paths.state}: the resume state is inconsistent with this run ({epochs} epochs of "
                          f"{steps_per_epoch} steps); delete it and start over with --force")


def write_epoch(paths: RunPaths, tensors: dict, meta: CheckpointMeta, history: list[dict[str, Any]],
                resume_state: dict[str, Any] | None, *, epoch: int, keep_every: int, complete: bool,
                first_write: bool) -> None:
    """Order matters for crash safety: copies, resume state, OUT, metrics; the state goes last
    when the run is complete (a crash in between only repeats the last epoch). On the run's first
    write, an earlier run's state, metrics and epoch copies are removed first."""
    if first_write:
        for stale in previous_files(paths):
            stale.unlink(missing_ok=True)
    if keep_every and (epoch % keep_every == 0 or complete):
        save_checkpoint(paths.epoch(epoch), tensors, meta, force=True)
    if resume_state is not None:
        save_state(paths.state, resume_state)
    save_checkpoint(paths.out, tensors, meta, force=True)
    text = "".join(json.dumps(r) + "\n" for r in history)
    atomic_write(paths.metrics, lambda tmp: Path(tmp).write_text(text))
    if complete:
        paths.state.unlink(missing_ok=True)
