"""docs/ARCHITECTURE.md stays true: every module sits in its table, and no import, those inside
functions included, reaches a layer above the importer's; no import circle and no module over
400 lines in mgtool/.

A plugin folder (``mgtool/archs/families/*.py``, ``mgtool/data/sources/*.py``) is one row of the
table, so adding a plugin is adding its file."""

from __future__ import annotations

import ast
import re
from fnmatch import fnmatchcase
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "ARCHITECTURE.md"
RANK = {"errors": 0, "core": 1, "library": 2, "orchestration": 3, "cli": 4}
ENTRY_POINTS = ("mgtool/__main__.py",)  # runs the CLI; nothing imports it
MAX_LINES = 400


def documented_layers() -> dict[str, str]:
    """Module path (or a plugin folder's glob) -> layer, from the module table (its bold rows open a
    layer; before the first, errors)."""
    text = DOC.read_text()
    table = text[text.index("| module | one job |"):text.index("## Each command's data flow")]
    layers, layer = {}, "errors"
    for line in table.splitlines():
        if heading := re.match(r"\| \*\*(\w+)\*\* \|", line):
            layer = heading.group(1)
        elif row := re.match(r"\| `(mgtool/[^`]+)` \|", line):
            head, alternatives, tail = re.fullmatch(r"([^{]*)(?:\{([^}]*)\})?(.*)", row.group(1)).groups()
            for name in alternatives.split(",") if alternatives else [""]:  # mgtool/train/{paths,state}.py
                layers[head + name + tail] = layer
    assert set(layers.values()) <= set(RANK), set(layers.values()) - set(RANK)
    return layers


def dotted(path: str) -> str:
    """mgtool/fuse/api.py -> mgtool.fuse.api; a package's __init__.py -> the package."""
    return path.removesuffix(".py").replace("/", ".").removesuffix(".__init__")


def modules() -> dict[str, str]:
    """Dotted module name -> path, for every file of the package."""
    return {dotted(p): p for p in sorted(f.relative_to(ROOT).as_posix() for f in (ROOT / "mgtool").rglob("*.py"))}


LAYERS, MODULES = documented_layers(), modules()


def documented(path: str) -> str | None:
    """The layer of a module's row, or of the plugin folder (a glob row) it sits in."""
    if path in LAYERS:
        return LAYERS[path]
    globs = [row for row in LAYERS if "*" in row and fnmatchcase(path, row) and "/" not in path[row.index("*"):]]
    return LAYERS[globs[0]] if globs else None


def layer(module: str) -> str:
    """A module's layer; a package's is its modules' layer (they must agree)."""
    if MODULES.get(module) and documented(MODULES[module]):
        return documented(MODULES[module])
    inner = {documented(p) for m, p in MODULES.items() if m.startswith(module + ".")} - {None}
    assert len(inner) == 1, f"{module}: no single documented layer ({sorted(inner)})"
    return inner.pop()


def imports(path: str) -> set[str]:
    """Every module a file imports anywhere in it, absolute (``from pkg import module`` names the module)."""
    package = dotted(path) if path.endswith("__init__.py") else dotted(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse((ROOT / path).read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            submodules = {f"{base}.{a.name}" for a in node.names} & set(MODULES)
            found |= submodules or {base}
    return found


def imported(path: str) -> set[str]:
    """The mgtool modules a file imports."""
    return {m for m in imports(path) if m == "mgtool" or m.startswith("mgtool.")}


def test_every_module_is_in_the_architecture_table() -> None:
    undocumented = [p for p in MODULES.values()
                    if documented(p) is None and not p.endswith("/__init__.py") and p not in ENTRY_POINTS]
    assert undocumented == [], f"add these to docs/ARCHITECTURE.md's module table: {undocumented}"
    stale = sorted(row for row in LAYERS if not any(p == row or documented(p) and fnmatchcase(p, row)
                                                    for p in MODULES.values()))
    assert stale == [], f"docs/ARCHITECTURE.md names modules that do not exist: {stale}"


@pytest.mark.parametrize("path", sorted(p for p in MODULES.values() if p not in ENTRY_POINTS))
def test_no_import_reaches_a_layer_above(path: str) -> None:
    mine = layer(dotted(path))
    upward = {m: layer(m) for m in imported(path) if m != "mgtool" and RANK[layer(m)] > RANK[mine]}
    assert upward == {}, f"{path} ({mine}) imports from higher layers: {upward}"


def test_the_named_import_rules_hold() -> None:
    def importers(target: str) -> set[str]:
        return {p for p in MODULES.values() if any(m == target or m.startswith(target + ".") for m in imported(p))}

    cli = {p for p in MODULES.values() if p.startswith("mgtool/cli/")}
    assert importers("mgtool.cli") <= cli | set(ENTRY_POINTS)
    assert not any(p.startswith("mgtool/data/") for p in importers("mgtool.train"))
    assert importers("mgtool.convert") <= cli | {"mgtool/convert.py", "mgtool/pipeline.py", "mgtool/__init__.py"}
    assert imported("mgtool/mixing.py") == set()
    assert imported("mgtool/mixing_triton.py") == {"mgtool.mixing"}
    assert not any(m.split(".")[0] == "torch" for m in imports("mgtool/train/settings.py")), \
        "mgtool.train.settings must not import torch"


def test_no_module_is_over_400_lines() -> None:
    long = {p: n for p in MODULES.values() if (n := len((ROOT / p).read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"split these modules (at most {MAX_LINES} lines each): {long}"


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (module -> modules it imports), as a path that returns to its start."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_import_cycle_finds_a_circle() -> None:
    assert import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert import_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_circle_in_mgtool() -> None:
    """Imports anywhere in a file count, those inside functions included; a package's ``__init__``
    counts as a module (``from mgtool.archs import ArchSpec`` imports it)."""
    graph = {m: imported(p) - {m} for m, p in MODULES.items()}
    cycle = import_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)
