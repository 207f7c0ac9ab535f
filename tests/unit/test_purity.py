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


def _core_modules() -> list[str]:
    root = Path(importlib.util.find_spec("assay.core").origin or "").parent  # type: ignore[union-attr]
    return sorted(
        "assay.core." + ".".join(p.relative_to(root).with_suffix("").parts)
        for p in root.rglob("*.py")
        if p.name != "__init__.py"
    )


@pytest.mark.parametrize("module", _core_modules())
def test_the_shared_core_knows_no_registry_relay_or_format(module: str) -> None:
    """The core is shared by the registry and the relay: it may import neither, nor the
    format inspectors, so nothing of one component leaks into the other."""
    components = ("assay.registry", "assay.relay", "assay.formats", "assay.cli")
    bad = [n for n in _imports(module) if n.startswith(components)]
    assert not bad, f"{module} imports {bad}"


def test_core_error_codes_carry_no_artifact_concepts() -> None:
    import inspect

    from assay.core import errors

    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass)
               if issubclass(c, errors.AssayError) and c.__module__ == errors.__name__]  # fmt: skip
    assert len(classes) > 10
    leaked = [c.__name__ for c in classes if c.code.startswith("artifact.")]
    assert not leaked, f"registry codes in the shared core: {leaked}"
