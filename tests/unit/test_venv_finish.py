"""packaging/venv_finish.py, the build step between pip and dpkg-deb: what it prunes leaves
every RECORD true, a tampered or missing file fails the build, and the SBOM's hashes are
those of the wheels and RECORDs actually installed."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "venv_finish", ROOT / "packaging" / "venv_finish.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["venv_finish"] = module
    spec.loader.exec_module(module)
    return module


vf = load()
SO = "cpython-311-x86_64-linux-gnu.so"


def record_line(sp: Path, rel: str) -> str:
    path = (sp / rel).resolve()
    raw = hashlib.sha256(path.read_bytes()).digest()
    digest = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    return f"{rel},sha256={digest},{path.stat().st_size}"


def install(sp: Path, name: str, version: str, files: dict[str, bytes], meta: str = "") -> Path:
    """A distribution as pip leaves it: files, METADATA, RECORD (pyc and RECORD unhashed)."""
    for rel, data in files.items():
        path = (sp / rel).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    dist_info = sp / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(
        f"Metadata-Version: 2.4\nName: {name}\nVersion: {version}\n{meta}"
    )
    lines = [record_line(sp, f"{dist_info.name}/METADATA")]
    for rel in files:
        lines.append(f"{rel},," if rel.endswith(".pyc") else record_line(sp, rel))
    lines.append(f"{dist_info.name}/RECORD,,")
    (dist_info / "RECORD").write_text("\n".join(lines) + "\n")
    return dist_info


@pytest.fixture
def venv(tmp_path: Path) -> Path:
    v = tmp_path / "opt" / "assay"
    sp = v / "lib" / "python3.11" / "site-packages"
    sp.mkdir(parents=True)
    (v / "bin").mkdir()
    for link in ("python", "python3", "python3.11"):
        (v / "bin" / link).symlink_to("/usr/bin/python3.11")
    install(
        sp,
        "pyarrow",
        "26.0.1",
        {
            "pyarrow/__init__.py": b"import pyarrow.lib\n",
            "pyarrow/lib.cpython-311-x86_64-linux-gnu.so": b"\x7fELF lib",
            "pyarrow/conftest.py": b"import pytest\n",
            "pyarrow/__pycache__/conftest.cpython-311.pyc": b"pyc",
            "pyarrow/__pycache__/__init__.cpython-311.pyc": b"pyc",
            "pyarrow/tests/test_array.py": b"def test(): pass\n",
            "pyarrow/tests/__pycache__/test_array.cpython-311.pyc": b"pyc",
            "pyarrow/tests/data/orc/decimal.jsn.gz": b"\x1f\x8b",
            "pyarrow/include/arrow/api.h": b"#pragma once\n",
            "pyarrow/src/arrow/python/common.cc": b"//\n",
            "pyarrow/_pyarrow_cpp_tests.pyx": b"#\n",
            "pyarrow/_pyarrow_cpp_tests.pxd": b"#\n",
            f"pyarrow/_pyarrow_cpp_tests.{SO}": b"\x7fELF t",
            "pyarrow/includes/libarrow.pxd": b"#\n",
        },
        meta="License-Expression: Apache-2.0\n",
    )
    install(
        sp,
        "trio",
        "0.35.0",
        {
            "trio/__init__.py": b"",
            "trio/_tests/test_trio.py": b"",
            "trio/_core/__init__.py": b"",
            "trio/_core/_tests/test_run.py": b"",
            "trio/_tools/gen_exports.py": b"#!/usr/bin/env python3\n",
            "trio/testing/__init__.py": b"",
        },
        meta="License-Expression: MIT OR Apache-2.0\n",
    )
    install(
        sp,
        "sniffio",
        "1.3.1",
        {"sniffio/__init__.py": b"", "sniffio/_tests/t.py": b""},
        meta="License: MIT OR Apache-2.0\n",
    )
    install(
        sp,
        "idna",
        "3.20",
        {
            "idna/__init__.py": b"",
            "idna/_vendor/.gitignore": b"*.o\n",
            "../../../bin/idna": b"#!/opt/assay/bin/python\n",
        },
        meta="License: BSD-3-Clause\n",
    )
    install(
        sp,
        "sortedcontainers",
        "2.4.0",
        {"sortedcontainers/__init__.py": b""},
        meta="License: Apache 2.0\nClassifier: License :: OSI Approved :: Apache Software License",
    )
    install(
        sp,
        "assay",
        "0.1.0",
        {"assay/__init__.py": b"", "../../../bin/assay": b"#!/opt/assay/bin/python\n"},
        meta="License-Expression: Apache-2.0\n",
    )
    return v


def sp_of(v: Path) -> Path:
    return v / "lib" / "python3.11" / "site-packages"


def test_pruning_removes_tests_headers_and_foreign_scripts_and_every_record_stays_true(
    venv: Path, tmp_path: Path
) -> None:
    sp = sp_of(venv)
    vf.prune(venv, tmp_path / "pruned.json")
    for gone in (
        "pyarrow/tests",
        "pyarrow/include",
        "pyarrow/src",
        "pyarrow/conftest.py",
        "pyarrow/__pycache__/conftest.cpython-311.pyc",
        f"pyarrow/_pyarrow_cpp_tests.{SO}",
        "trio/_tests",
        "trio/_core/_tests",
        "trio/_tools",
        "sniffio/_tests",
    ):
        assert not (sp / gone).exists(), gone
    for kept in (
        "pyarrow/__init__.py",
        "pyarrow/includes/libarrow.pxd",
        "trio/testing/__init__.py",
        "pyarrow/__pycache__/__init__.cpython-311.pyc",
        "idna/__init__.py",
    ):
        assert (sp / kept).exists(), kept
    assert sorted(p.name for p in (venv / "bin").iterdir()) == [
        "assay",
        "python",
        "python3",
        "python3.11",
    ]
    vf.check_records(sp)  # raises on any listed file that is missing or changed
    pruned = json.loads((tmp_path / "pruned.json").read_text())
    assert set(pruned) == {"pyarrow", "trio", "sniffio", "idna"}
    assert pruned["idna"] == ["../../../bin/idna", "idna/_vendor/.gitignore"]
    record = (sp / "pyarrow-26.0.1.dist-info" / "RECORD").read_text()
    assert "tests/" not in record and "include/" not in record and "pyarrow/lib." in record


def test_pruning_fails_when_a_listed_distribution_has_nothing_to_prune(
    venv: Path, tmp_path: Path
) -> None:
    """A renamed test directory upstream must not pass silently as "pruned"."""
    sp = sp_of(venv)
    record = sp / "sniffio-1.3.1.dist-info" / "RECORD"
    record.write_text("".join(x for x in record.read_text().splitlines(True) if "_tests" not in x))
    with pytest.raises(SystemExit, match="nothing of sniffio"):
        vf.prune(venv, tmp_path / "pruned.json")


@pytest.mark.parametrize("attack", ["flip a byte", "truncate", "delete"])
def test_a_file_that_differs_from_its_record_fails_the_check(venv: Path, attack: str) -> None:
    target = sp_of(venv) / "pyarrow" / "__init__.py"
    if attack == "flip a byte":
        data = bytearray(target.read_bytes())
        data[0] ^= 1
        target.write_bytes(bytes(data))
    elif attack == "truncate":
        target.write_bytes(b"")
    else:
        target.unlink()
    with pytest.raises(SystemExit, match=r"pyarrow/__init__\.py"):
        vf.check_records(sp_of(venv))


@pytest.mark.parametrize("planted", ["pyarrow/evil.py", "sitecustomize.py", "x.pth"])
def test_a_file_no_distribution_owns_fails_the_check(venv: Path, planted: str) -> None:
    """A module dropped into site-packages (a .pth or sitecustomize runs at every start)
    is in no RECORD, so nothing would vouch for it: the build refuses it."""
    (sp_of(venv) / planted).write_text("import os\n")
    with pytest.raises(SystemExit, match="belongs to no distribution"):
        vf.check_records(sp_of(venv))


def test_record_hashes_agree_with_what_pip_wrote_for_real_distributions() -> None:
    """Differential: our RECORD hash format against pip's, on this environment's own
    installed wheels (pyyaml: compiled extension; trio: pure Python)."""
    import importlib.metadata as md

    checked = 0
    for name in ("pyyaml", "trio", "pytest"):
        dist = md.distribution(name)
        for f in dist.files or []:
            if f.hash is None or f.hash.mode != "sha256":
                continue
            path = Path(str(dist.locate_file(f)))
            assert vf.record_hash(path) == f"sha256={f.hash.value}", path
            checked += 1
    assert checked > 50


def wheelhouse(tmp_path: Path) -> Path:
    house = tmp_path / "wheelhouse"
    house.mkdir()
    for name in (
        "pyarrow-26.0.1-cp311-cp311-manylinux_2_28_x86_64",
        "trio-0.35.0-py3-none-any",
        "sniffio-1.3.1-py3-none-any",
        "idna-3.20-py3-none-any",
        "sortedcontainers-2.4.0-py2.py3-none-any",
        "assay-0.1.0-py3-none-any",
    ):
        (house / f"{name}.whl").write_bytes(f"zip of {name}".encode())
    return house


def sbom_doc(names: list[tuple[str, str]]) -> dict[str, object]:
    return {
        "bomFormat": "CycloneDX",
        "metadata": {"component": {"name": "assay", "version": "0.1.0"}},
        "components": [{"name": n, "version": v} for n, v in names],
    }


INSTALLED = [
    ("pyarrow", "26.0.1"),
    ("trio", "0.35.0"),
    ("sniffio", "1.3.1"),
    ("idna", "3.20"),
    ("sortedcontainers", "2.4.0"),
]


def test_sbom_components_carry_their_wheel_digest_and_installed_record_hash(
    venv: Path, tmp_path: Path
) -> None:
    house = wheelhouse(tmp_path)
    vf.prune(venv, tmp_path / "pruned.json")
    path = tmp_path / "sbom.json"
    path.write_text(json.dumps(sbom_doc(INSTALLED)))
    vf.sbom(venv, house, tmp_path / "pruned.json", path)
    doc = json.loads(path.read_text())
    for component in [doc["metadata"]["component"], *doc["components"]]:
        (h,) = component["hashes"]
        props = {p["name"]: p["value"] for p in component["properties"]}
        wheel = house / props["assay:wheel"]
        assert h == {"alg": "SHA-256", "content": hashlib.sha256(wheel.read_bytes()).hexdigest()}
        (dist_info,) = sp_of(venv).glob(f"{component['name']}-*.dist-info")
        record = (dist_info / "RECORD").read_bytes()
        assert props["assay:record-sha256"] == hashlib.sha256(record).hexdigest()
    props = {c["name"]: {p["name"]: p["value"] for p in c["properties"]} for c in doc["components"]}
    assert "pyarrow/tests/" in props["pyarrow"]["assay:pruned"].split()
    # Its console script and its stray .gitignore, by name.
    assert props["idna"]["assay:pruned"] == "bin/idna idna/_vendor/.gitignore"
    assert "assay:pruned" not in props["sortedcontainers"]


@pytest.mark.parametrize(
    "gap",
    [
        "a wheel is missing",
        "an installed dist is not listed",
        "a listed component is not installed",
    ],
)
def test_sbom_refuses_anything_it_cannot_account_for(venv: Path, tmp_path: Path, gap: str) -> None:
    house = wheelhouse(tmp_path)
    vf.prune(venv, tmp_path / "pruned.json")
    names = list(INSTALLED)
    if gap == "a wheel is missing":
        next(house.glob("trio-*.whl")).unlink()
    elif gap == "an installed dist is not listed":
        names.remove(("idna", "3.20"))
    else:
        names.append(("numpy", "2.0.0"))
    path = tmp_path / "sbom.json"
    path.write_text(json.dumps(sbom_doc(names)))
    with pytest.raises(SystemExit):
        vf.sbom(venv, house, tmp_path / "pruned.json", path)


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("MIT", True),
        ("MIT OR Apache-2.0", True),
        ("(MIT OR Apache-2.0) AND BSD-3-Clause", True),
        ("GPL-2.0-or-later WITH Classpath-exception-2.0", True),
        ("Apache 2.0", False),
        ("MIT License", False),
        ("The MIT License (MIT)", False),
        ("", False),
        ("OR MIT", False),
        ("BSD", True),
        ("MIT OR", False),
    ],
)
def test_only_spdx_expressions_become_dep5_licence_names(text: str, ok: bool) -> None:
    assert vf.spdx_expression(text) is ok


def paragraphs(text: str) -> list[dict[str, str]]:
    out = []
    for block in text.strip().split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line.startswith(" "):
                fields[key] += "\n" + line
            else:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        out.append(fields)
    return out


def test_copyright_names_every_distribution_and_defines_every_licence(
    venv: Path, tmp_path: Path
) -> None:
    head = tmp_path / "head"
    head.write_text(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        "Upstream-Name: assay\n\nFiles: *\nCopyright: 2026 assay developers\n"
        "License: Apache-2.0\n"
    )
    out = tmp_path / "copyright"
    vf.copyright_file(venv, head, out)
    paras = paragraphs(out.read_text())
    files = [p for p in paras if "Files" in p]
    # A standalone licence paragraph: its name on the first line, its text below.
    standalone = {p["License"].splitlines()[0] for p in paras if set(p) == {"License"}}
    assert {p["Comment"].split()[0] for p in files[1:]} == {
        "pyarrow",
        "trio",
        "sniffio",
        "idna",
        "sortedcontainers",
    }
    by_name = {p["Comment"].split()[0]: p for p in files[1:]}
    assert by_name["trio"]["License"] == "MIT or Apache-2.0"
    assert by_name["idna"]["License"] == "BSD-3-Clause"
    # "Apache 2.0" is a name, not an SPDX expression: "other", with what was declared.
    assert by_name["sortedcontainers"]["License"] == "other"
    assert "Apache 2.0" in by_name["sortedcontainers"]["Comment"]
    used = set()
    for p in files:
        used |= {
            t
            for t in p["License"].replace("(", " ").replace(")", " ").split()
            if t not in {"and", "or"}
        }
    assert used <= standalone, used - standalone
    assert "/usr/share/common-licenses/Apache-2.0" in out.read_text()
