"""packaging/assay-system, the root-side tool the package installs: the directories
relay-init makes under /srv are readable by the relay whatever root's umask, an admin's
existing directories keep their modes, and the parser the man page documents is the one
that runs."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import stat
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader(
        "assay_system", str(ROOT / "packaging" / "assay-system")
    )
    spec = importlib.util.spec_from_loader("assay_system", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


system = load()


@pytest.mark.parametrize("umask", [0o077, 0o027, 0o022, 0o000])
def test_relay_dataset_directories_are_0755_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    target = tmp_path / "srv" / "assay" / "datasets" / "example"
    old = os.umask(umask)
    try:
        system.make_dirs(target, 0o755)
    finally:
        os.umask(old)
    for d in (tmp_path / "srv", tmp_path / "srv" / "assay", target.parent, target):
        assert stat.S_IMODE(d.stat().st_mode) == 0o755, d


def test_existing_directories_keep_the_admins_modes(tmp_path: Path) -> None:
    site = tmp_path / "srv"
    site.mkdir(mode=0o750)
    site.chmod(0o750)
    system.make_dirs(site / "assay" / "datasets", 0o755)
    assert stat.S_IMODE(site.stat().st_mode) == 0o750
    assert stat.S_IMODE((site / "assay" / "datasets").stat().st_mode) == 0o755


def test_the_documented_parser_is_the_one_that_runs() -> None:
    parser = system.build_parser()
    assert parser.prog == "assay-system"
    args = parser.parse_args(["relay-init", "--people", "3000", "--json"])
    assert args.func is system.cmd_relay_init and args.people == 3000
    assert parser.parse_args(["init"]).func is system.cmd_init
    with pytest.raises(SystemExit):
        system.main(["token", "create"])  # --id is required


@pytest.mark.parametrize(
    ("name", "args", "expected"),
    [
        ("assay-init-system", ["--json"], ["init", "--json"]),
        ("assay-system", ["token", "list"], ["token", "list"]),
        ("assay-system", ["relay-init", "--people", "3 000"], ["relay-init", "--people", "3 000"]),
    ],
)
def test_the_sbin_entry_point_runs_the_program_on_the_venvs_interpreter(
    tmp_path: Path, name: str, args: list[str], expected: list[str]
) -> None:
    """/usr/sbin/assay-system (assay-system.sh), run under both its names, with the venv's
    interpreter replaced by a recorder: -I (no PYTHONPATH or user site from root's
    environment), the packaged program, ``init`` for assay-init-system, arguments intact."""
    recorder = tmp_path / "python3"
    recorder.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    recorder.chmod(0o755)
    text = (ROOT / "packaging" / "assay-system.sh").read_text()
    assert text.startswith("#!/bin/sh\n") and text.count("/opt/assay/bin/python3") == 1
    wrapper = tmp_path / "assay-system"
    wrapper.write_text(text.replace("/opt/assay/bin/python3", str(recorder)))
    wrapper.chmod(0o755)
    (tmp_path / "assay-init-system").symlink_to("assay-system")
    proc = subprocess.run(
        [str(tmp_path / name), *args],
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": "/tmp/evil"},
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    argv = proc.stdout.splitlines()
    assert argv == ["-I", "/usr/share/assay/assay-system.py", *expected]
    build = (ROOT / "packaging" / "build-deb.sh").read_text()
    assert '"$ROOT/packaging/assay-system" "$D/usr/share/assay/assay-system.py"' in build
    assert '"$ROOT/packaging/assay-system.sh" "$D/usr/sbin/assay-system"' in build
