"""The values of a parsed recipe, checked before any stage runs.

Names (initialisers, architecture families, data sets, schedules) are checked against
the registries and choice lists the stages use, so a typo fails in seconds rather than
after hours of training. A bad value raises ``SettingError`` labelled with its recipe key
(``fuse.init``, ``finetune.train.lr``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

from mgtool.errors import MgtoolError, SettingError, check_choice, check_range

DEVICE = re.compile(r"(auto|cpu|cuda|cuda:\d+)\Z")
SCRATCH_SIZES = ("large", "small")
SCRATCH_KINDS = ("plain", "template-mixing")
TEST_SETS = ("subset", "full")


def _at(key: str, check: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run ``check(field, ...)``; a ``SettingError`` is relabelled with the recipe key."""
    try:
        check(key.rsplit(".", 1)[-1], *args, **kwargs)
    except SettingError as e:
        raise e.renamed(key) from None


def _positive_int(key: str, value: int | None, low: int = 1) -> None:
    if value is not None:
        _at(key, check_range, value, low=low)


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
    ``fuse.init_scale``, ``fuse.init_norm``, ``fuse.noise``, ``fuse.init_options.NAME``."""
    from mgtool.fuse import resolve_init

    try:
        resolve_init(f.init, scale=f.init_scale, noise=f.noise, init_norm=f.init_norm, options=f.init_options)
    except SettingError as e:
        where = "fuse" if e.field in FUSE_FIELDS else "fuse.init_options"
        raise e.renamed(f"{where}.{e.field}") from None


def validate_recipe(r: Any) -> None:
    """Check every value of the recipe ``r`` (a ``mgtool.recipe.Recipe``)."""
    from mgtool.archs import family_names
    from mgtool.coef_init import init_names
    from mgtool.data import dataset_names
    from mgtool.data.loaders import LOADERS
    from mgtool.plan import SHARE_MODES
    from mgtool.recipe import GROWTH_METHODS, RECIPE_VERSION
    from mgtool.train.api import dataset_preset
    from mgtool.train.evaluate import PRECISIONS

    preset = dataset_preset(r.data.name) if r.data.name in dataset_names() else "standard"
    if r.version != RECIPE_VERSION:
        raise MgtoolError(f"recipe version {r.version} is not supported (this mgtool reads {RECIPE_VERSION})")
    _at("name", check_folder_name, r.name)
    if r.reference is None:
        raise MgtoolError("recipe top level: missing key 'reference'")
    for section in ("net1", "finetune"):
        if r.scratch is None and getattr(r, section) is None:
            raise MgtoolError(f"recipe top level: missing key {section!r} (needed unless the recipe has scratch:)")
        if r.scratch is not None and getattr(r, section) is not None:
            raise MgtoolError(f"recipe {section}: not used by a scratch: recipe (one net from scratch); remove it")
    _at("method", check_choice, r.method, GROWTH_METHODS)

    _at("data.name", check_choice, r.data.name, dataset_names())
    if r.data.subset is not None:
        for k in ("train", "test"):
            _positive_int(f"data.subset.{k}", getattr(r.data.subset, k), low=0)

    _at("arch.name", check_choice, r.arch.name, family_names())
    _at("arch.width", check_range, r.arch.width, low=0.0, low_open=True)
    _positive_int("arch.templates", r.arch.templates)
    _at("arch.share", check_choice, r.arch.share, SHARE_MODES)

    if r.net1 is not None:
        if (r.net1.checkpoint is None) == (r.net1.train is None):
            raise MgtoolError("recipe net1: give exactly one of checkpoint (a given net 1) or train (train it here)")
        if r.net1.train is not None:
            check_train("net1.train", r.net1.train, preset)
    if r.net2.checkpoint is not None and (r.net2.train, r.net2.growth_point, r.net2.seed) != (None, 1.0, None):
        raise MgtoolError("recipe net2: a given checkpoint is fused as is; remove train, growth_point and seed")
    if r.net2.train is not None:
        check_train("net2.train", r.net2.train, preset)
    _at("net2.growth_point", check_range, r.net2.growth_point, low=0.0, high=1.0, low_open=True)

    _at("fuse.init", check_choice, r.fuse.init, init_names())
    _at("fuse.noise", check_range, r.fuse.noise, low=0.0)
    check_fuse_init(r.fuse)
    _positive_int("fuse.factor", r.fuse.factor, low=2)
    if r.method == "mixturegrowth" and r.fuse.fusion and r.fuse.factor != 2:
        raise SettingError("factor", "must be 2 when fusing net 1 and net 2 (set fuse.fusion: false to grow "
                           "one net by another factor)", label="fuse.factor")

    if r.finetune is not None:
        check_train("finetune.train", r.finetune.train, preset)
        if r.finetune.flops_norm is not None:
            _at("finetune.flops_norm", check_range, r.finetune.flops_norm, low=0.0, low_open=True)
    if r.scratch is not None:
        check_train("scratch.train", r.scratch.train, preset)
        _at("scratch.size", check_choice, r.scratch.size, SCRATCH_SIZES)
        _at("scratch.kind", check_choice, r.scratch.kind, SCRATCH_KINDS)
        if r.scratch.flops_norm is not None:
            _at("scratch.flops_norm", check_range, r.scratch.flops_norm, low=0.0, low_open=True)

    _positive_int("recalibrate.samples", r.recalibrate.samples, low=0)
    _positive_int("recalibrate.batch_size", r.recalibrate.batch_size)

    _positive_int("reference.epochs", r.reference.epochs)
    _positive_int("reference.batch_size", r.reference.batch_size)
    _at("eval.test_set", check_choice, r.eval.test_set, TEST_SETS)
    _positive_int("eval.limit", r.eval.limit)
    _positive_int("eval.batch_size", r.eval.batch_size)

    rt = r.runtime
    if not DEVICE.match(rt.device):
        raise SettingError("device", f"must be auto, cpu, cuda or cuda:N, got {rt.device!r}", label="runtime.device")
    _at("runtime.precision", check_choice, rt.precision, PRECISIONS)
    _at("runtime.loader", check_choice, rt.loader, LOADERS)
    _positive_int("runtime.workers", rt.workers, low=0)
    _positive_int("runtime.threads", rt.threads)
