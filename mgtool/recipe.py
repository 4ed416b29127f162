"""Recipes: one YAML file per experiment, parsed strictly into frozen dataclasses.

The first comment line of every recipe is the command that runs it. Every section and
key is listed below; an unknown key is an error naming it and where it is, and a value
of the wrong type is an error naming the key. ``--set a.b=value`` overrides one value
(YAML-typed) before validation. See ``recipes/*.yaml`` and README "Recipes".
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mgtool.errors import MgtoolError, first_line
from mgtool.safe_write import check_input_file
from mgtool.train.settings import TrainSettings as TrainSection  # one source: the CLI options' dataclass

RECIPE_VERSION = 1


@dataclass(frozen=True)
class Subset:
    """A seeded random subset of a data set held in files (fashion-mnist, mnist, cifar10,
    cifar100: every channel), written to DIR/data in the source's own file layout."""

    train: int = 0  # training images (0: all)
    test: int = 0  # test images used during training and by `eval: {on: subset}` (0: all)
    seed: int = 0


@dataclass(frozen=True)
class DataSection:
    name: str
    dir: str | None = None  # None: the registry's search path (--data-dir, $MGTOOL_DATA_DIR, ./data, ...)
    options: dict[str, Any] = field(default_factory=dict)
    download: bool = False
    subset: Subset | None = None


@dataclass(frozen=True)
class ArchSection:
    """The small network (net 1 and net 2); the grown one is ``factor`` times as wide."""

    name: str
    width: float
    options: dict[str, Any] = field(default_factory=dict)
    templates: int = 2
    share: str = "pairs"


@dataclass(frozen=True)
class Net1Section:
    """Net 1 is given: a checkpoint (template-mixing as is; plain is converted), or trained here."""

    checkpoint: str | None = None
    train: TrainSection | None = None
    seed: int = 0


@dataclass(frozen=True)
class Net2Section:
    train: TrainSection | None = None  # None: net 1's schedule
    growth_point: float = 1.0  # fraction of net 2's schedule trained before growing (Table 2)
    seed: int | None = None  # None: net 1's + 1
    # A net 2 trained elsewhere (small, template-mixing, net 1's plan): fused as is, and
    # charged (unlike net 1); then train, growth_point and seed are not given.
    checkpoint: str | None = None


@dataclass(frozen=True)
class FuseSection:
    init: str = "orthogonal"
    factor: int = 2
    noise: float = 0.0
    seed: int = 0
    fusion: bool = True  # False: grow net 1 alone ("MixtureGrowth w/o fusion"); no net 2
    # New tiles' norm as a fraction of the layer's diagonal tiles' (None: the initialiser's own).
    init_scale: float | None = None
    init_norm: str | None = None  # orthogonal, random: unit (the authors' literal vector) or learned
    init_options: dict[str, Any] = field(default_factory=dict)  # any setting the initialiser declares


# Off unless a recipe asks (the demo and recipes/fashion-mnist-cpu.yaml do, with 2,048 images).
# Why: recalibration is charged (forward passes over training images), so with
# ``finetune.flops_norm`` it shortens the fine-tune, and it is not the paper's protocol; a
# default that switched it on would silently change what every existing recipe, run folder
# and sweep result file means (a sweep's setting digest holds only the keys it gives). With
# it on, "at growth" is reported both as fused and recalibrated; a fine-tune of given epochs
# learns the same weights either way (BatchNorm trains on batch statistics; tested).
DEFAULT_RECALIBRATION_SAMPLES = 0  # 2048 is a good value when on


@dataclass(frozen=True)
class RecalibrateSection:
    """BatchNorm statistics re-estimated after growth (``mgtool recalibrate-bn``); the fine-tune
    starts from the recalibrated net. ``samples: 0`` turns it off."""

    samples: int = DEFAULT_RECALIBRATION_SAMPLES  # the first N training images (the whole split if fewer)
    batch_size: int = 256


@dataclass(frozen=True)
class FinetuneSection:
    train: TrainSection
    seed: int = 0
    # Fine-tune until the whole growth has spent this FLOPs Norm (the paper's 0.45X): the
    # epochs are then computed, and ``train.epochs`` is not used.
    flops_norm: float | None = None


@dataclass(frozen=True)
class ScratchSection:
    """One net trained from scratch instead of growing (the paper's Large, Small and their Match rows)."""

    train: TrainSection
    size: str = "large"  # large: ``fuse.factor`` times arch.width; small: arch.width
    kind: str = "plain"  # plain, or template-mixing (arch.templates, arch.share)
    flops_norm: float | None = None  # train to this FLOPs Norm (epochs computed; train.epochs unused)
    seed: int = 0


@dataclass(frozen=True)
class ReferenceSection:
    """The large net trained from scratch: FLOPs Norm is measured against ``epochs`` of it."""

    epochs: int  # the large net's full schedule (the paper's 1.0X)
    batch_size: int | None = None  # default: the fine-tune's batch size
    train_match: bool = False  # also train it from scratch with the FLOPs growth spent ("Large Match")
    seed: int = 0


@dataclass(frozen=True)
class EvalSection:
    test_set: str = "subset"  # subset: the test images the stages trained with; full: the data set's whole test split
    limit: int | None = None
    batch_size: int = 256


@dataclass(frozen=True)
class RuntimeSection:
    device: str = "auto"
    precision: str = "auto"
    loader: str = "auto"
    workers: int | None = None
    threads: int | None = None  # torch CPU threads (None: torch's default)


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

    def validate(self) -> None:
        """Every value, before anything runs: a typo fails in seconds, naming its key."""
        from mgtool.recipe_checks import validate_recipe

        validate_recipe(self)


def _plain(value: Any) -> Any:
    """Tuples as lists, so the recipe dumps as plain YAML and JSON."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------- parsing


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except MgtoolError as e:
                errors.append(str(e))
        raise MgtoolError(errors[0] if errors else f"recipe {where}: must not be null")
    if dataclasses.is_dataclass(tp):
        return _dataclass(tp, value, where)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise MgtoolError(f"recipe {where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is list:
        if not isinstance(value, list):
            raise MgtoolError(f"recipe {where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise MgtoolError(f"recipe {where}: expected a list, got {value!r}")
        item = typing.get_args(tp)[0]
        return tuple(_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise MgtoolError(f"recipe {where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MgtoolError(f"recipe {where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise MgtoolError(f"recipe {where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise MgtoolError(f"recipe {where}: expected a string, got {value!r}")
        return value
    raise MgtoolError(f"recipe {where}: unsupported type {_type_name(tp)}")  # pragma: no cover


def _dataclass(cls: Any, data: Any, where: str) -> Any:
    label = where or "top level"
    if not isinstance(data, dict):
        raise MgtoolError(f"recipe {label}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        known = ", ".join(fields)
        raise MgtoolError(f"recipe {label}: unknown key {unknown[0]!r} (known: {known})")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{where}.{name}" if where else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise MgtoolError(f"recipe {label}: missing key {name!r}")
            continue
        kwargs[name] = _convert(data[name], hints[name], sub)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], YAML-typed value)."""
    key, sep, value = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise MgtoolError(f"--set expects KEY=VALUE with a dotted key such as finetune.train.epochs=5, got {text!r}")
    try:
        parsed = safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.split("."), parsed


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = json.loads(json.dumps(data))
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for i, k in enumerate(keys[:-1]):
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            if not isinstance(child, dict):
                raise MgtoolError(f"--set {text}: {'.'.join(keys[: i + 1])} is not a section")
            node = child
        node[keys[-1]] = value
    return out


def recipe_from_dict(data: Any, overrides: list[str] | None = None) -> Recipe:
    if not isinstance(data, dict):
        raise MgtoolError("a recipe is a YAML mapping of sections (name, data, arch, net1, ...)")
    recipe = _dataclass(Recipe, apply_overrides(data, overrides or []), "")
    recipe.validate()
    return recipe


MAX_YAML_NODES = 100_000  # a recipe has a few hundred; aliases may not expand past this


class _RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses duplicate keys and bounds alias expansion: a 1 KB
    file of nested aliases ("billion laughs") must not expand into gigabytes later."""

    def compose_document(self) -> Any:
        node = super().compose_document()
        _count_nodes(node, {}, [0])
        return node

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # an unhashable key: SafeLoader reports it
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                        f"(first at line {first.start_mark.line + 1})",
                        key_node.start_mark)
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 reads 1e30 (no dot) as a string; recipes read it as the number YAML 1.2 and JSON mean.
# add_implicit_resolver copies the resolver table into the subclass: SafeLoader is untouched.
_RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


def _count_nodes(node: Any, sizes: dict[int, int], total: list[int]) -> int:
    """The node count of ``node`` with every alias expanded (memoised per node)."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    sizes[id(node)] = 1  # a recursive alias counts once; safe_load refuses recursion later anyway
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_count_nodes(child, sizes, total) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size += sum(_count_nodes(k, sizes, total) + _count_nodes(v, sizes, total) for k, v in node.value)
    if size > MAX_YAML_NODES:
        raise yaml.YAMLError(f"aliases expand to more than {MAX_YAML_NODES:,} values (nested anchors?); "
                             "refusing to expand them")
    sizes[id(node)] = size
    return size


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with duplicate keys refused and alias expansion bounded."""
    return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506  (a SafeLoader subclass)


def read_recipe_text(path: Path | str) -> str:
    path = Path(path)
    if path.exists():
        check_input_file(path, "a recipe file")  # a FIFO would block the read
    try:
        return path.read_text()
    except FileNotFoundError:
        raise MgtoolError(f"{path}: no such recipe file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MgtoolError(f"{path}: cannot read the recipe ({e})") from None


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
