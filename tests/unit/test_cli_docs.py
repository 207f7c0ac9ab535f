"""Man page and completion come from the CLI's parser: every command the parser accepts is
documented and completed, the page is valid roff, and the output depends only on the
source (SOURCE_DATE_EPOCH), so the Debian package built from it is reproducible."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from assay.cli import docs
from assay.cli.main import build_parser

# The docs extra (build-time tools); the module itself imports them only when it writes.
pytest.importorskip("argparse_manpage")
pytest.importorskip("shtab")

ROOT = Path(__file__).resolve().parents[2]


def commands(parser: argparse.ArgumentParser) -> list[str]:
    """Every subcommand path the parser accepts, e.g. ``token create``, searched."""
    found: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append(name)
                found += [f"{name} {deeper}" for deeper in commands(sub)]
    return found


def test_every_command_of_the_parser_is_in_the_man_page_and_the_completion(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    (page,) = docs.manpages(tmp_path / "man")
    assert page.name == "assay.1"
    roff = page.read_text()
    assert roff.startswith('.TH ASSAY "1" "2023\\-11\\-14" "assay ')
    bash = tmp_path / "comp" / "assay"
    zsh = tmp_path / "comp" / "_assay"
    assert sorted(docs.completions(tmp_path / "comp")) == sorted([bash, zsh])
    names = commands(build_parser())
    assert len(names) > 10, names
    for name in names:
        # Each command has its own section, headed with its full path (roff escapes "-").
        heading = f".SH COMMAND \\fI\\,'assay {name}'\\/\\fR".replace("-", "\\-")
        assert heading in roff, name
        last = name.split()[-1]
        assert last in bash.read_text(), name
        assert last in zsh.read_text(), name


def test_the_output_depends_on_the_source_only(tmp_path: Path) -> None:
    outs = []
    for seed, run in enumerate(("a", "b"), start=1):
        # A different hash seed per run: no set or dict order may leak into the output.
        env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000", "PYTHONHASHSEED": str(seed)}
        proc = subprocess.run(
            [sys.executable, "-m", "assay.cli.docs", "--man", str(tmp_path / run / "man"),
             "--completion", str(tmp_path / run / "comp")],
            env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        outs.append({p.relative_to(tmp_path / run): p.read_bytes()
                     for p in sorted((tmp_path / run).rglob("*")) if p.is_file()})  # fmt: skip
    assert outs[0] == outs[1]
    assert set(outs[0]) == {Path("man/assay.1"), Path("comp/assay"), Path("comp/_assay")}


def test_the_module_refuses_to_do_nothing() -> None:
    with pytest.raises(SystemExit) as exc:
        docs.main([])
    assert exc.value.code == 2


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
def test_the_man_page_renders_without_warnings(tmp_path: Path) -> None:
    (page,) = docs.manpages(tmp_path)
    proc = subprocess.run(
        ["man", "--warnings", "-E", "UTF-8", "-l", str(page)],
        env={**os.environ, "MANWIDTH": "80", "MAN_KEEP_STDERR": "1", "LC_ALL": "C.UTF-8"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr
    assert "POSITIONAL ARGUMENTS" in proc.stdout or "COMMAND" in proc.stdout
