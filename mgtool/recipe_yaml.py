"""Strict YAML for recipes: duplicate keys refused, aliases bounded, values typed into
frozen dataclasses (unknown keys and wrong types named by their dotted key), ``--set`` overrides.

Nothing here knows the recipe's sections; ``mgtool.recipe`` declares them.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from mgtool.errors import MgtoolError, SettingError
from mgtool.safe_write import check_input_file


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
            except SettingError:
                raise  # the right type, a wrong value: a section's own check
            except MgtoolError as e:
                errors.append(str(e))
        raise MgtoolError(errors[0] if errors else f"recipe {where}: must not be null")
    if dataclasses.is_dataclass(tp):
        return parse_dataclass(tp, value, where)
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


def parse_dataclass(cls: Any, data: Any, where: str) -> Any:
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
    try:
        return cls(**kwargs)  # a section checks its own values (``__post_init__``)
    except SettingError as e:
        raise e.renamed(f"{where}.{e.label}" if where else e.label) from None


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
