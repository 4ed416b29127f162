"""The checks the recipe sections make on themselves (``mgtool.recipe.Section.check``).

Names (initialisers, architecture families, data sets, schedules) are checked against
the registries and choice lists the stages use, so a typo fails in seconds rather than
after hours of training. A bad value raises ``SettingError`` labelled with its key inside
its section; the recipe puts the section's key in front (``fuse.init``, ``finetune.train.lr``).
This module knows no section: it imports nothing of ``mgtool.recipe``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from mgtool.errors import SettingError, check_range

DEVICE = re.compile(r"(auto|cpu|cuda|cuda:\d+)\Z")
SCRATCH_SIZES = ("large", "small")
SCRATCH_KINDS = ("plain", "template-mixing")
TEST_SETS = ("subset", "full")


def at(key: str, check: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run ``check(field, ...)``; a ``SettingError`` is relabelled with the recipe key."""
    try:
        check(key.rsplit(".", 1)[-1], *args, **kwargs)
    except SettingError as e:
        raise e.renamed(key) from None


def positive(key: str, value: int | None, low: int = 1) -> None:
    """An optional whole number of at least ``low``."""
    if value is not None:
        at(key, check_range, value, low=low)


def check_folder_name(field: str, name: str) -> str:
    """A plain folder name: not empty, no path separator, not ``.``/``..``, not absolute."""
    plain = (name not in ("", ".", "..") and "\0" not in name and PurePosixPath(name).name == name
             and PureWindowsPath(name).name == name)
    if not plain:
        raise SettingError(field, f"must be a plain folder name (no '/', no '..', not absolute), got {name!r}")
    return name


def check_train(key: str, t: Any, preset: str = "standard") -> None:
    """A ``train:`` section, through the same resolution the stage will use (one validator)."""
    from mgtool.train.settings import resolve

    if t.epochs is None:
        raise SettingError("epochs", "must be given", label=f"{key}.epochs")
    try:
        resolve(t, preset=preset)
    except SettingError as e:
        raise e.renamed(f"{key}.{e.field}") from None


FUSE_FIELDS = ("init_scale", "init_norm", "noise")


def check_fuse_init(f: Any) -> None:
    """The ``fuse:`` initialiser settings, through the check ``fuse`` itself makes (one validator):
    ``init_scale``, ``init_norm``, ``noise``, ``init_options.NAME``."""
    from mgtool.fuse import resolve_init

    try:
        resolve_init(f.init, scale=f.init_scale, noise=f.noise, init_norm=f.init_norm, options=f.init_options)
    except SettingError as e:
        raise e.renamed(e.field if e.field in FUSE_FIELDS else f"init_options.{e.field}") from None
