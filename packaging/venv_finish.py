"""Finish the application venv for the Debian package (run by packaging/build-deb.sh with
the venv's own interpreter, standard library only).

    venv_finish.py prune     VENV MANIFEST
    venv_finish.py sbom      VENV WHEELHOUSE MANIFEST SBOM
    venv_finish.py copyright VENV COPYRIGHT_HEAD OUT

``prune`` removes what nothing at run time reads (test suites, C++ headers and sources,
the console scripts of dependencies, stray version-control files) and rewrites each
touched distribution's RECORD so that it lists exactly the files that remain: the
installed tree keeps describing itself.
What it removed is written to MANIFEST (JSON), which ``sbom`` records per component.

``sbom`` adds to the CycloneDX SBOM, per component, ``hashes``: the SHA-256 of the wheel
the component was installed from (for PyPI wheels, the digest PyPI publishes for that
file; systemd-python is built here from its sdist, so its wheel is this build's). Two
properties tie the component to the installed tree: ``assay:wheel`` (the file name) and
``assay:record-sha256``, the SHA-256 of the installed ``*.dist-info/RECORD``, which in
turn carries the hash of every file the distribution installed. Every RECORD is checked
against the files on disk before anything is written: a mismatch fails the build.

``copyright`` writes a machine-readable (DEP-5) debian/copyright: assay itself under
Apache-2.0, then one paragraph per installed distribution with the licence its metadata
declares and where its licence texts are.
"""

from __future__ import annotations

import base64
import csv
import fnmatch
import hashlib
import io
import json
import re
import shutil
import sys
from email.parser import HeaderParser
from pathlib import Path

#: What is removed, per distribution: paths relative to site-packages (a trailing "/" is
#: a whole directory). None of it is imported by the distribution's own runtime code.
PRUNE: dict[str, list[str]] = {
    # Test suite and its data (~7 MB), C++ headers and sources for building against
    # libarrow_python (~6 MB), the C++ test-hook extension and the pytest plugin.
    "pyarrow": [
        "pyarrow/tests/",
        "pyarrow/include/",
        "pyarrow/src/",
        "pyarrow/conftest.py",
        "pyarrow/_pyarrow_cpp_tests.pyx",
        "pyarrow/_pyarrow_cpp_tests.pxd",
        "pyarrow/_pyarrow_cpp_tests.cpython-*.so",
    ],
    "trio": ["trio/_tests/", "trio/_core/_tests/", "trio/_tools/"],
    "sniffio": ["sniffio/_tests/"],
}
#: Of the venv's bin/, only the interpreter links and assay's own entry point stay.
KEEP_BIN = re.compile(r"(assay|python|python3|python3\.\d+)")
#: Version-control files some wheels carry by accident (securesystemslib's vendored
#: ed25519 has a .gitignore): never read at run time, wherever they are.
VCS_CONTROL = {
    ".bzrignore",
    ".cvsignore",
    ".gitattributes",
    ".gitignore",
    ".gitmodules",
    ".gitreview",
    ".hgignore",
    ".hgsigs",
    ".hgtags",
    ".arch-inventory",
}
CHUNK = 1 << 20


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def site_packages(venv: Path) -> Path:
    (found,) = sorted(venv.glob("lib/python3.*/site-packages"))
    return found


def dist_infos(sp: Path) -> dict[str, Path]:
    """Normalized distribution name -> its .dist-info directory."""
    out: dict[str, Path] = {}
    for d in sorted(sp.glob("*.dist-info")):
        meta = HeaderParser().parsestr((d / "METADATA").read_text(encoding="utf-8"))
        out[normalize(meta["Name"])] = d
    return out


def read_record(dist_info: Path) -> list[list[str]]:
    with (dist_info / "RECORD").open(newline="", encoding="utf-8") as f:
        return [row for row in csv.reader(f) if row]


def write_record(dist_info: Path, rows: list[list[str]]) -> None:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    (dist_info / "RECORD").write_text(buf.getvalue(), encoding="utf-8")


def file_sha256(path: Path) -> hashlib._Hash:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest


def record_hash(path: Path) -> str:
    """A file's hash as RECORD writes it (PEP 376/427: urlsafe base64, no padding)."""
    raw = file_sha256(path).digest()
    return "sha256=" + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def resolve(sp: Path, entry: str) -> Path:
    return (sp / entry).resolve() if entry.startswith("..") else sp / entry


def matches(entry: str, patterns: list[str]) -> bool:
    """A RECORD entry is pruned by a directory pattern ("dir/") or a file glob."""
    return any(
        entry.startswith(p) if p.endswith("/") else fnmatch.fnmatchcase(entry, p) for p in patterns
    )


def prune(venv: Path, manifest: Path) -> None:
    sp = site_packages(venv)
    bin_dir = (venv / "bin").resolve()
    removed: dict[str, list[str]] = {}
    for name, dist_info in dist_infos(sp).items():
        patterns = PRUNE.get(name, [])
        rows = read_record(dist_info)
        keep: list[list[str]] = []
        gone: list[str] = []
        for row in rows:
            entry = row[0]
            target = resolve(sp, entry)
            scripted = target.parent == bin_dir and not KEEP_BIN.fullmatch(target.name)
            # Compiled bytecode of a pruned module goes with it.
            source = entry.replace("/__pycache__/", "/").rsplit(".cpython-", 1)[0] + ".py"
            if (
                scripted
                or Path(entry).name in VCS_CONTROL
                or matches(entry, patterns)
                or ("/__pycache__/" in entry and matches(source, patterns))
            ):
                gone.append(entry)
                target.unlink(missing_ok=True)
            else:
                keep.append(row)
        for pattern in patterns:
            if pattern.endswith("/"):
                shutil.rmtree(sp / pattern, ignore_errors=True)  # __pycache__ left behind
        if gone:
            write_record(dist_info, keep)
            removed[name] = sorted(gone)
    for name, patterns in PRUNE.items():
        if name not in removed:
            raise SystemExit(f"venv_finish: nothing of {name} was pruned; is it still installed?")
        for pattern in patterns:
            if pattern.endswith("/") and (sp / pattern).exists():
                raise SystemExit(f"venv_finish: {pattern} is still there")
    for leftover in sorted(bin_dir.iterdir()):
        if not KEEP_BIN.fullmatch(leftover.name):
            raise SystemExit(f"venv_finish: bin/{leftover.name} belongs to no RECORD")
    manifest.write_text(json.dumps(removed, indent=1, sort_keys=True) + "\n")


def check_records(sp: Path) -> None:
    """Every file a RECORD lists exists and, where it has a hash, matches it; and every
    file under site-packages is listed by some RECORD (nothing no distribution owns)."""
    problems: list[str] = []
    owned: set[Path] = set()
    for name, dist_info in dist_infos(sp).items():
        for row in read_record(dist_info):
            entry, expected = row[0], row[1] if len(row) > 1 else ""
            target = resolve(sp, entry)
            owned.add(target)
            if not target.is_file():
                problems.append(f"{name}: {entry} is missing")
            elif expected and record_hash(target) != expected:
                problems.append(f"{name}: {entry} does not match its RECORD hash")
    for path in sorted(sp.rglob("*")):
        if (path.is_file() or path.is_symlink()) and path not in owned:
            problems.append(f"{path.relative_to(sp)} belongs to no distribution")
    if problems:
        raise SystemExit("venv_finish: RECORD check failed:\n  " + "\n  ".join(problems[:50]))


def wheel_for(wheelhouse: Path, name: str, version: str) -> Path:
    """The wheel a distribution was installed from (the wheelhouse was the only index)."""
    found = []
    for wheel in sorted(wheelhouse.glob("*.whl")):
        dist, ver = wheel.name.split("-")[:2]
        if normalize(dist) == normalize(name) and ver == version:
            found.append(wheel)
    if len(found) != 1:
        raise SystemExit(f"venv_finish: {len(found)} wheels for {name} {version} in {wheelhouse}")
    return found[0]


def sbom(venv: Path, wheelhouse: Path, manifest: Path, sbom_path: Path) -> None:
    sp = site_packages(venv)
    check_records(sp)
    infos = dist_infos(sp)
    pruned: dict[str, list[str]] = json.loads(manifest.read_text())
    doc = json.loads(sbom_path.read_text())
    components = [doc["metadata"]["component"], *doc["components"]]
    seen: set[str] = set()
    for component in components:
        name = normalize(component["name"])
        if name not in infos:
            raise SystemExit(f"venv_finish: SBOM names {component['name']}, not installed")
        seen.add(name)
        wheel = wheel_for(wheelhouse, component["name"], component["version"])
        component["hashes"] = [{"alg": "SHA-256", "content": file_sha256(wheel).hexdigest()}]
        props = [p for p in component.get("properties", []) if not p["name"].startswith("assay:")]
        props.append({"name": "assay:wheel", "value": wheel.name})
        record = infos[name] / "RECORD"
        props.append({"name": "assay:record-sha256", "value": file_sha256(record).hexdigest()})
        if name in pruned:
            # What the package leaves out of this component: the patterns, and by name the
            # console scripts it dropped from bin/.
            scripts = [f"bin/{Path(e).name}" for e in pruned[name] if e.startswith("../")]
            vcs = [e for e in pruned[name] if Path(e).name in VCS_CONTROL]
            value = " ".join(PRUNE.get(name, []) + scripts + vcs)
            props.append({"name": "assay:pruned", "value": value})
        component["properties"] = props
    missing = sorted(set(infos) - seen)
    if missing:
        raise SystemExit(f"venv_finish: installed but not in the SBOM: {missing}")
    sbom_path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


# -- copyright ---------------------------------------------------------------------------
COMMON = Path("/usr/share/common-licenses")
#: An SPDX licence identifier: a letter first, then letters, digits, ".", "-", and an
#: optional trailing "+"; at least one digit or hyphen or all capitals (MIT, ISC).
SPDX_ID = re.compile(r"[A-Za-z][A-Za-z0-9.-]*\+?")
SPDX_OPS = {"AND", "OR", "WITH"}


def spdx_expression(text: str) -> bool:
    """``text`` reads as an SPDX licence expression: identifiers joined by AND/OR/WITH
    (parentheses aside). "Apache 2.0" or "MIT License" are names, not expressions."""
    tokens = text.replace("(", " ").replace(")", " ").split()
    if not tokens or len(tokens) % 2 == 0:
        return False
    ids, ops = tokens[0::2], tokens[1::2]
    return all(SPDX_ID.fullmatch(t) for t in ids) and all(o in SPDX_OPS for o in ops)


def declared_licence(meta: dict[str, str], classifiers: list[str]) -> tuple[str, str]:
    """(DEP-5 licence expression, note) from METADATA: License-Expression (PEP 639),
    else a one-line License field that is an SPDX expression, else "other" with what the
    metadata does say."""
    expression = meta.get("License-Expression", "").strip()
    field = meta.get("License", "").strip()
    if not expression and "\n" not in field and spdx_expression(field):
        expression = field
    if not expression:
        named = [c.split(" :: ")[-1] for c in classifiers if c.startswith("License ::")]
        if field and "\n" not in field and len(field) < 80:
            named.insert(0, field)
        return "other", "Declared only as: " + ("; ".join(named) or "(nothing)")
    # DEP-5 writes the operators in lower case.
    return re.sub(r"\b(AND|OR|WITH)\b", lambda m: m.group(1).lower(), expression), ""


def who(meta: dict[str, str], name: str) -> str:
    for key in ("Author", "Author-email", "Maintainer", "Maintainer-email"):
        value = " ".join(meta.get(key, "").split())
        if value:
            return value
    return f"the {name} authors"


def copyright_file(venv: Path, head: Path, out: Path) -> None:
    """HEAD (the header and assay's own paragraph), one paragraph per third-party
    distribution, then a standalone paragraph for each licence named."""
    sp = site_packages(venv)
    prefix = "opt/assay/" + str(sp.relative_to(venv))
    paragraphs = [head.read_text().rstrip("\n")]
    used = {"Apache-2.0"}
    for name, dist_info in sorted(dist_infos(sp).items()):
        if name == "assay":
            continue
        parsed = HeaderParser().parsestr((dist_info / "METADATA").read_text(encoding="utf-8"))
        meta = dict(parsed.items())
        classifiers = parsed.get_all("Classifier") or []
        tops = sorted({row[0].split("/")[0] for row in read_record(dist_info)} - {".."})
        files = [f"{prefix}/{t}/*" if (sp / t).is_dir() else f"{prefix}/{t}" for t in tops]
        licence, note = declared_licence(meta, classifiers)
        used.update(t for t in re.split(r"[\s()]+", licence) if t and t not in {"and", "or"})
        texts = sorted(
            p.relative_to(sp)
            for p in dist_info.rglob("*")
            if p.is_file() and re.match(r"(LICEN[CS]E|COPYING|NOTICE|AUTHORS)", p.name, re.I)
        )
        comment = [f"{parsed['Name']} {parsed['Version']}: the licence its metadata declares."]
        if note:
            comment.append(note)
        comment.append("Licence texts:" + ("" if texts else " none shipped"))
        comment += [f"/{prefix}/{t}" for t in texts]
        paragraphs.append(
            "\n".join(
                [
                    "Files: " + "\n ".join(files),
                    f"Copyright: {who(meta, parsed['Name'])}",
                    f"License: {licence}",
                    "Comment: " + "\n ".join(comment),
                ]
            )
        )
    for licence in sorted(used):
        if (COMMON / licence).exists():
            text = f" On Debian systems the full text is in {COMMON / licence}."
        else:
            text = (
                " The full text, with each holder's notice, is in the licence files named\n"
                " in the Comment of each paragraph above that uses this licence."
            )
        paragraphs.append(f"License: {licence}\n{text}")
    out.write_text("\n\n".join(paragraphs) + "\n")


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "prune":
        prune(Path(argv[1]), Path(argv[2]))
    elif len(argv) == 5 and argv[0] == "sbom":
        sbom(Path(argv[1]), Path(argv[2]), Path(argv[3]), Path(argv[4]))
    elif len(argv) == 4 and argv[0] == "copyright":
        copyright_file(Path(argv[1]), Path(argv[2]), Path(argv[3]))
    else:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
