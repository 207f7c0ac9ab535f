"""pyproject.toml says what the code needs and under what licence, and nothing else.

The runtime dependencies are compared with what ``daemon/assay`` actually imports (every
module, parsed, not grepped), resolved to distributions by the installed environment's own
``packages_distributions()``: a package only the tests import (safetensors was one) or an
import that arrives only transitively is caught either way.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
#: Extras that code under daemon/assay may import from (optional at run time); ``test``
#: is not one of them.
CODE_EXTRAS = ("journald",)
#: Import names of extras' packages the dev environment need not have installed.
NOT_INSTALLED_HERE = {"systemd": "systemd-python"}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", spec)
    assert match, spec
    return normalize(match.group(0))


def top_level_imports_of(path: Path) -> set[str]:
    """Absolute imports anywhere in one module (functions too), as top-level names."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def top_level_imports(tree: Path) -> set[str]:
    return set().union(*(top_level_imports_of(p) for p in sorted(tree.rglob("*.py"))))


def third_party(names: set[str]) -> set[str]:
    return {n for n in names if n not in sys.stdlib_module_names and n != "assay"}


def declared(*groups: str) -> set[str]:
    specs = [s for g in groups for s in PROJECT["optional-dependencies"][g]]
    return {requirement_name(s) for s in specs}


def distributions_of(imported: set[str]) -> set[str]:
    owners = md.packages_distributions()
    found: set[str] = set()
    for name in sorted(imported):
        dists = owners.get(name) or (
            [NOT_INSTALLED_HERE[name]] if name in NOT_INSTALLED_HERE else []
        )
        assert dists, f"daemon imports {name!r}, which no installed distribution provides"
        found.update(normalize(d) for d in dists)
    return found


def test_every_import_of_the_daemon_is_declared_and_every_dependency_imported() -> None:
    needed = distributions_of(third_party(top_level_imports(ROOT / "daemon" / "assay")))
    runtime = {requirement_name(spec) for spec in PROJECT["dependencies"]}
    extras = declared(*CODE_EXTRAS)
    assert needed - runtime - extras == set(), "imported by the daemon but not declared"
    assert runtime - needed == set(), "declared at run time but never imported by the daemon"
    assert extras - needed == set(), "in an extra but never imported by the daemon"


def test_man_pages_and_completion_need_nothing_but_the_standard_library() -> None:
    """assay.cli.docs (and packaging/system_manpage.py, which uses it) build the package's
    man pages and completion with no build-time tool: nothing to declare, nothing that
    a build could fetch in another version."""
    for path in (ROOT / "daemon" / "assay" / "cli" / "docs.py",
                 ROOT / "packaging" / "system_manpage.py"):  # fmt: skip
        assert third_party(top_level_imports_of(path)) == set(), path
    assert "docs" not in PROJECT["optional-dependencies"]


def test_safetensors_is_a_test_dependency_only() -> None:
    assert "safetensors" not in third_party(top_level_imports(ROOT / "daemon" / "assay"))
    assert "safetensors" in declared("test")
    assert "safetensors" in third_party(top_level_imports(ROOT / "tests"))


def test_licence_is_an_spdx_expression_with_its_text_shipped() -> None:
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    reference = Path("/usr/share/common-licenses/Apache-2.0")
    if reference.exists():
        assert text == reference.read_text()
    # PEP 639: a licence expression replaces the licence classifiers; both is an error.
    assert not [c for c in PROJECT["classifiers"] if c.startswith("License ::")]


def test_project_urls_and_a_maintainer_are_declared() -> None:
    urls = PROJECT["urls"]
    assert {"Homepage", "Source", "Issues"} <= set(urls)
    for url in urls.values():
        assert url.startswith("https://") and "localhost" not in url, url
    (maintainer,) = PROJECT["maintainers"]
    assert maintainer["name"] and re.fullmatch(r"[^@\s]+@[^@\s]+\.[a-z]+", maintainer["email"])
    assert not maintainer["email"].endswith(("@localhost", ".local", ".invalid"))


@pytest.mark.parametrize("field", ["Homepage", "Maintainer"])
def test_the_debian_control_file_takes_them_from_pyproject(field: str) -> None:
    """One place to change them: control.in has placeholders, build-deb.sh fills them."""
    control = (ROOT / "packaging" / "debian" / "control.in").read_text()
    assert f"{field}: @{field.upper()}@" in control
    assert "localhost" not in control
