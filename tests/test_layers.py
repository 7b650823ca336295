"""The layers of the package (its docstring draws them): no module imports upward."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import anymmap

PACKAGE = Path(anymmap.__file__).parent

#: Each module's layer; a module may import from its own layer and those below.
LAYERS = {
    "_errors": 0,
    "_stopping": 0,
    "_sys": 1,
    "_core": 2,
    "_advice": 2,
    "_backend": 3,
    "_rwlock": 3,
    "_async": 4,
    "_sync": 4,
    "__init__": 5,
    "sync": 5,
}


def layer_of(module: str) -> int:
    """The layer of ``anymmap.<module>`` (its first component decides)."""
    return LAYERS[module.split(".")[0]]


def imports_of(path: Path) -> set[str]:
    """The anymmap modules ``path`` imports, relative to the package."""
    relative = path.relative_to(PACKAGE).with_suffix("")
    parts = list(relative.parts)
    package = parts[:-1]  # the package a module (or __init__) is in
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.startswith("anymmap"):
                target = node.module.split(".")[1:]
            else:
                continue
            if target:
                found.add(".".join(target))
            else:  # "from . import x": the names are modules
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("anymmap."):
                    found.add(alias.name.split(".", 1)[1])
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_upward(path: Path) -> None:
    name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    own = layer_of(name)
    for imported in imports_of(path):
        assert layer_of(imported) <= own, f"{name} (layer {own}) imports {imported}"


def test_every_module_has_a_layer() -> None:
    for path in MODULES:
        layer_of(".".join(path.relative_to(PACKAGE).with_suffix("").parts))


def test_the_package_docstring_draws_the_layers() -> None:
    doc = anymmap.__doc__ or ""
    for name in ("_sys", "_core", "_backend", "_async", "_sync"):
        assert name in doc
