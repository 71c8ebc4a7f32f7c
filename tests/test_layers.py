"""The package's import graph: every import runs downward, and nothing forms a circle.

The whole package is read, ``testing/`` and imports inside one sub-package
included, with every kind of import: module level, inside a function, and
under ``TYPE_CHECKING`` (a circle hidden behind a lazy import is still a
circle a reader has to untangle).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import keyapi_async

PACKAGE = Path(keyapi_async.__file__).parent

# Bottom to top. A module belongs to the longest entry that prefixes its dotted
# name (relative to the package); it may import only from its layer or below.
LAYERS: list[set[str]] = [
    {"__about__", "_errors", "models", "engine.validate"},
    {"engine.targets"},
    {"engine.endpoints"},
    {"engine.sansio", "engine.retry"},
    {"engine.config"},
    {"engine.transport"},
    {"engine.gate", "engine.budget", "engine.redis_gate"},
    {"engine.fetch"},
    {"engine.batch"},
    {"engine", "_client", ""},
    {"media.paths", "media.outcome", "media.plan"},
    {"archive", "media", "export"},
    {"capture", "highlight_media"},
    {"watch"},
    {"testing"},
    {"web"},
    {"cli", "__main__"},
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def layer_of(module: str) -> int:
    best: tuple[int, int] | None = None
    for number, layer in enumerate(LAYERS):
        for prefix in layer:
            matches = module == prefix or (prefix and module.startswith(prefix + "."))
            if matches and (best is None or len(prefix) > best[0]):
                best = (len(prefix), number)
    if best is None:
        raise AssertionError(f"module {module!r} has no layer: add it to LAYERS")
    return best[1]


def imports_of(module: str) -> Iterator[tuple[str, int]]:
    """``(imported module, line)`` for every import of the package's own modules."""
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    if module == "":
        package = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "keyapi_async":
                    yield ".".join(alias.name.split(".")[1:]), node.lineno
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level == 0:
            if not node.module or node.module.split(".")[0] != "keyapi_async":
                continue
            base = node.module.split(".")[1:]
        else:
            base = package[: len(package) - node.level + 1] if node.level > 1 else list(package)
            base = [*base, *(node.module.split(".") if node.module else [])]
        target = ".".join(base)
        submodules = [f"{target}.{a.name}".lstrip(".") for a in node.names]
        named = [m for m in submodules if m in MODULES]
        if named:
            yield from ((m, node.lineno) for m in named)
        else:
            yield target, node.lineno


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer_of(module)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_downward(module: str) -> None:
    level = layer_of(module)
    for target, line in imports_of(module):
        assert target in MODULES, f"{module}:{line} imports {target!r}, which does not exist"
        assert layer_of(target) <= level, (
            f"{MODULES[module].relative_to(PACKAGE)}:{line} imports {target} (upward)"
        )


def find_circle(graph: dict[str, list[str]]) -> list[str] | None:
    """The first import circle in ``graph`` (depth first, sorted), or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for target in graph.get(module, ()):
            circle = visit(target, [*path, module])
            if circle:
                return circle
        done.add(module)
        return None

    for module in sorted(graph):
        circle = visit(module, [])
        if circle:
            return circle
    return None


def test_no_import_circle() -> None:
    graph = {m: sorted({t for t, _ in imports_of(m) if t != m}) for m in MODULES}
    circle = find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle or [])


def test_the_walk_finds_a_circle() -> None:
    assert find_circle({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == ["a", "b", "c", "a"]
    assert find_circle({"a": ["b"], "b": [], "c": ["a", "b"]}) is None
