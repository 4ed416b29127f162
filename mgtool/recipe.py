"""Recipes: one YAML file per experiment, parsed strictly into frozen dataclasses.

The first comment line of every recipe is the command that runs it. Every section and
key is listed below; an unknown key is an error naming it and where it is, and a value
of the wrong type is an error naming the key. ``--set a.b=value`` overrides one value
(YAML-typed) before validation. See ``recipes/*.yaml`` and README "Recipes".

Each section checks its own values when it is built (``Section.check``, labelled by its
recipe key: ``fuse.init``); ``Recipe.validate`` is a loop over the sections plus the rules
between sections. The YAML reading itself is ``mgtool.recipe_yaml``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mgtool.errors import MgtoolError, SettingError, check_choice, check_range, first_line
from mgtool.recipe_checks import (
    DEVICE,
    SCRATCH_KINDS,
    SCRATCH_SIZES,
    TEST_SETS,
    at,
    check_folder_name,
    check_fuse_init,
    check_train,
    positive,
)
from mgtool.recipe_yaml import (  # noqa: F401  (re-exported: the recipe API)
    apply_overrides,
    parse_dataclass,
    parse_override,
    read_recipe_text,
    safe_load,
)
from mgtool.train.settings import TrainSettings as TrainSection  # one source: the CLI options' dataclass

RECIPE_VERSION = 1


class Section:
    """A recipe section: it checks its own values when it is built, each error labelled by its
    key inside the section (the parser and ``Recipe.validate`` put the section's key in front)."""

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ``SettingError`` (labelled with ``at``) or ``MgtoolError`` for a bad value."""


@dataclass(frozen=True)
class Subset(Section):
    """A seeded random subset of a data set held in files (fashion-mnist, mnist, cifar10,
    cifar100: every channel), written to DIR/data in the source's own file layout."""

    train: int = 0  # training images (0: all)
    test: int = 0  # test images used during training and by `eval: {on: subset}` (0: all)
    seed: int = 0

    def check(self) -> None:
        positive("train", self.train, low=0)
        positive("test", self.test, low=0)


@dataclass(frozen=True)
class DataSection(Section):
    name: str
    dir: str | None = None  # None: the registry's search path (--data-dir, $MGTOOL_DATA_DIR, ./data, ...)
    options: dict[str, Any] = field(default_factory=dict)
    download: bool = False
    subset: Subset | None = None

    def check(self) -> None:
        from mgtool.data import dataset_names

        at("name", check_choice, self.name, dataset_names())


@dataclass(frozen=True)
class ArchSection(Section):
    """The small network (net 1 and net 2); the grown one is ``factor`` times as wide."""

    name: str
    width: float
    options: dict[str, Any] = field(default_factory=dict)
    templates: int = 2
    share: str = "pairs"

    def check(self) -> None:
        from mgtool.archs import family_names
        from mgtool.plan import SHARE_MODES

        at("name", check_choice, self.name, family_names())
        at("width", check_range, self.width, low=0.0, low_open=True)
        positive("templates", self.templates)
        at("share", check_choice, self.share, SHARE_MODES)


@dataclass(frozen=True)
class Net1Section(Section):
    """Net 1 is given: a checkpoint (template-mixing as is; plain is converted), or trained here."""

    checkpoint: str | None = None
    train: TrainSection | None = None
    seed: int = 0

    def check(self) -> None:
        if (self.checkpoint is None) == (self.train is None):
            raise MgtoolError("recipe net1: give exactly one of checkpoint (a given net 1) or train (train it here)")


@dataclass(frozen=True)
class Net2Section(Section):
    train: TrainSection | None = None  # None: net 1's schedule
    growth_point: float = 1.0  # fraction of net 2's schedule trained before growing (Table 2)
    seed: int | None = None  # None: net 1's + 1
    # A net 2 trained elsewhere (small, template-mixing, net 1's plan): fused as is, and
    # charged (unlike net 1); then train, growth_point and seed are not given.
    checkpoint: str | None = None

    def check(self) -> None:
        if self.checkpoint is not None and (self.train, self.growth_point, self.seed) != (None, 1.0, None):
            raise MgtoolError("recipe net2: a given checkpoint is fused as is; remove train, growth_point and seed")
        at("growth_point", check_range, self.growth_point, low=0.0, high=1.0, low_open=True)


@dataclass(frozen=True)
class FuseSection(Section):
    init: str = "orthogonal"
    factor: int = 2
    noise: float = 0.0
    seed: int = 0
    fusion: bool = True  # False: grow net 1 alone ("MixtureGrowth w/o fusion"); no net 2
    # New tiles' norm as a fraction of the layer's diagonal tiles' (None: the initialiser's own).
    init_scale: float | None = None
    init_norm: str | None = None  # orthogonal: capped (default), unit, learned, authors-code; random: learned, unit
    init_options: dict[str, Any] = field(default_factory=dict)  # any setting the initialiser declares

    def check(self) -> None:
        from mgtool.coef_init import init_names

        at("init", check_choice, self.init, init_names())
        at("noise", check_range, self.noise, low=0.0)
        check_fuse_init(self)
        positive("factor", self.factor, low=2)


# Off unless a recipe asks (the demo and recipes/fashion-mnist-cpu.yaml do, with 2,048 images).
# Why: recalibration is charged (forward passes over training images), so with
# ``finetune.flops_norm`` it shortens the fine-tune, and it is not the paper's protocol; a
# default that switched it on would silently change what every existing recipe, run folder
# and sweep result file means (a sweep's setting digest holds only the keys it gives). With
# it on, "at growth" is reported both as fused and recalibrated; a fine-tune of given epochs
# learns the same weights either way (BatchNorm trains on batch statistics; tested).
DEFAULT_RECALIBRATION_SAMPLES = 0  # 2048 is a good value when on


@dataclass(frozen=True)
class RecalibrateSection(Section):
    """BatchNorm statistics re-estimated after growth (``mgtool recalibrate-bn``); the fine-tune
    starts from the recalibrated net. ``samples: 0`` turns it off."""

    samples: int = DEFAULT_RECALIBRATION_SAMPLES  # the first N training images (the whole split if fewer)
    batch_size: int = 256

    def check(self) -> None:
        positive("samples", self.samples, low=0)
        positive("batch_size", self.batch_size)


@dataclass(frozen=True)
class FinetuneSection(Section):
    train: TrainSection
    seed: int = 0
    # Fine-tune until the whole growth has spent this FLOPs Norm (the paper's 0.45X): the
    # epochs are then computed, and ``train.epochs`` is not used.
    flops_norm: float | None = None

    def check(self) -> None:
        if self.flops_norm is not None:
            at("flops_norm", check_range, self.flops_norm, low=0.0, low_open=True)


@dataclass(frozen=True)
class ScratchSection(Section):
    """One net trained from scratch instead of growing (the paper's Large, Small and their Match rows)."""

    train: TrainSection
    size: str = "large"  # large: ``fuse.factor`` times arch.width; small: arch.width
    kind: str = "plain"  # plain, or template-mixing (arch.templates, arch.share)
    flops_norm: float | None = None  # train to this FLOPs Norm (epochs computed; train.epochs unused)
    seed: int = 0

    def check(self) -> None:
        at("size", check_choice, self.size, SCRATCH_SIZES)
        at("kind", check_choice, self.kind, SCRATCH_KINDS)
        if self.flops_norm is not None:
            at("flops_norm", check_range, self.flops_norm, low=0.0, low_open=True)


@dataclass(frozen=True)
class ReferenceSection(Section):
    """The large net trained from scratch: FLOPs Norm is measured against ``epochs`` of it."""

    epochs: int  # the large net's full schedule (the paper's 1.0X)
    batch_size: int | None = None  # default: the fine-tune's batch size
    train_match: bool = False  # also train it from scratch with the FLOPs growth spent ("Large Match")
    seed: int = 0

    def check(self) -> None:
        positive("epochs", self.epochs)
        positive("batch_size", self.batch_size)


@dataclass(frozen=True)
class EvalSection(Section):
    test_set: str = "subset"  # subset: the test images the stages trained with; full: the data set's whole test split
    limit: int | None = None
    batch_size: int = 256

    def check(self) -> None:
        at("test_set", check_choice, self.test_set, TEST_SETS)
        positive("limit", self.limit)
        positive("batch_size", self.batch_size)


@dataclass(frozen=True)
class RuntimeSection(Section):
    device: str = "auto"
    precision: str = "auto"
    loader: str = "auto"
    workers: int | None = None
    threads: int | None = None  # torch CPU threads (None: torch's default)

    def check(self) -> None:
        from mgtool.data.loaders import LOADERS
        from mgtool.train.evaluate import PRECISIONS

        if not DEVICE.match(self.device):
            raise SettingError("device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}", label="device")
        at("precision", check_choice, self.precision, PRECISIONS)
        at("loader", check_choice, self.loader, LOADERS)
        positive("workers", self.workers, low=0)
        positive("threads", self.threads)


GROWTH_METHODS = ("mixturegrowth", "random", "net2net")


@dataclass(frozen=True)
class Recipe:
    """A growth (``method``: MixtureGrowth, or a baseline that widens net 1 alone with
    ``fuse.factor`` and ``fuse.seed``), or with ``scratch`` one net trained from scratch
    (then ``net1`` and ``finetune`` are not given)."""

    name: str
    data: DataSection
    arch: ArchSection
    net1: Net1Section | None = None  # required unless scratch
    finetune: FinetuneSection | None = None  # required unless scratch
    reference: ReferenceSection | None = None  # required
    net2: Net2Section = field(default_factory=Net2Section)
    fuse: FuseSection = field(default_factory=FuseSection)
    recalibrate: RecalibrateSection = field(default_factory=RecalibrateSection)
    eval: EvalSection = field(default_factory=EvalSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    method: str = "mixturegrowth"
    scratch: ScratchSection | None = None
    description: str = ""
    version: int = RECIPE_VERSION

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def to_yaml(self, command: str | None = None) -> str:
        head = f"# {command}\n" if command else ""
        return head + yaml.safe_dump(self.to_dict(), sort_keys=False)

    def key(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Every value, before anything runs: a typo fails in seconds, naming its key. Each
        section checks itself (again: it did when built), then the rules between sections."""
        for f in dataclasses.fields(self):
            section = getattr(self, f.name)
            if isinstance(section, Section):
                try:
                    section.check()
                except SettingError as e:
                    raise e.renamed(f"{f.name}.{e.label}") from None
        if self.version != RECIPE_VERSION:
            raise MgtoolError(f"recipe version {self.version} is not supported (this mgtool reads {RECIPE_VERSION})")
        at("name", check_folder_name, self.name)
        if self.reference is None:
            raise MgtoolError("recipe top level: missing key 'reference'")
        for key in ("net1", "finetune"):
            if self.scratch is None and getattr(self, key) is None:
                raise MgtoolError(f"recipe top level: missing key {key!r} (needed unless the recipe has scratch:)")
            if self.scratch is not None and getattr(self, key) is not None:
                raise MgtoolError(f"recipe {key}: not used by a scratch: recipe (one net from scratch); remove it")
        at("method", check_choice, self.method, GROWTH_METHODS)
        self._check_train_sections()
        if self.method == "mixturegrowth" and self.fuse.fusion and self.fuse.factor != 2:
            raise SettingError("factor", "must be 2 when fusing net 1 and net 2 (set fuse.fusion: false to grow "
                               "one net by another factor)", label="fuse.factor")

    def _check_train_sections(self) -> None:
        """Every ``train:`` section, with the defaults of the data set's preset."""
        from mgtool.data import dataset_names
        from mgtool.train.api import dataset_preset

        preset = dataset_preset(self.data.name) if self.data.name in dataset_names() else "standard"
        sections = {"net1": self.net1, "net2": self.net2, "finetune": self.finetune, "scratch": self.scratch}
        for key, section in sections.items():
            if section is not None and section.train is not None:
                check_train(f"{key}.train", section.train, preset)


def _plain(value: Any) -> Any:
    """Tuples as lists, so the recipe dumps as plain YAML and JSON."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def recipe_from_dict(data: Any, overrides: list[str] | None = None) -> Recipe:
    if not isinstance(data, dict):
        raise MgtoolError("a recipe is a YAML mapping of sections (name, data, arch, net1, ...)")
    recipe = parse_dataclass(Recipe, apply_overrides(data, overrides or []), "")
    recipe.validate()
    return recipe


def load_recipe(path: Path | str, overrides: list[str] | None = None) -> Recipe:
    """Parse and validate a recipe file; errors name the file and the offending key."""
    text = read_recipe_text(path)
    try:
        data = safe_load(text)
    except yaml.YAMLError as e:
        raise MgtoolError(f"{path}: not valid YAML ({first_line(e)})") from None
    try:
        return recipe_from_dict(data, overrides)
    except MgtoolError as e:
        raise MgtoolError(f"{path}: {e}") from None


def recipe_command(path: Path | str) -> str | None:
    """The command on the recipe's first comment line (``# mgtool run ...``), if any."""
    for line in read_recipe_text(path).splitlines():
        if line.strip():
            return line.strip()[1:].strip() if line.lstrip().startswith("#") else None
    return None
