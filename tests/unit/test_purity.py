"""The pure core imports no I/O: not trio, Quart, the file system nor the network."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from assay.purity import FORBIDDEN, PURE_MODULES


def _imports(module: str) -> set[str]:
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, f"{module} not found"
    tree = ast.parse(Path(spec.origin).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _is_module(name: str) -> bool:
    try:
        spec = importlib.util.find_spec(name)
    except (ModuleNotFoundError, AttributeError):
        return False  # ``from assay.x import Name``: Name is not a module
    return spec is not None and bool(spec.origin) and str(spec.origin).endswith(".py")


def _closure(module: str) -> dict[str, str]:
    """Every import reachable from ``module`` through assay modules: name -> via."""
    seen: dict[str, str] = {}
    todo = [module]
    visited: set[str] = set()
    while todo:
        current = todo.pop()
        if current in visited:
            continue
        visited.add(current)
        for name in _imports(current):
            seen.setdefault(name, current)
            if name.startswith("assay.") and _is_module(name):
                todo.append(name)
    return seen


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_module_imports_no_io(module: str) -> None:
    if not _is_module(module):
        pytest.fail(f"pure module {module} is listed but missing")
    bad = {name: via for name, via in _closure(module).items() if name.split(".")[0] in FORBIDDEN}
    assert not bad, f"{module} reaches I/O modules: {bad}"
