"""The help, the man pages, the completion and README's table all follow the parser.

Everything here is derived from ``build_parser()``, so a command added later is held to
the same rules: a sentence of help for it and for each of its options, a man page that
renders cleanly and names every option, completion (bash and zsh) that offers its
subcommands, options and choices, and a row in README's CLI table. The output depends
on the source only (``SOURCE_DATE_EPOCH``), so the Debian package built from it is
reproducible.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from assay.cli import docs
from assay.cli.docs import options, walk
from assay.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
NODES = list(walk(build_parser()))
LEAVES = [n for n in NODES if not n.children]


def test_every_command_and_option_has_a_sentence_of_help() -> None:
    missing = []
    for node in NODES:
        if node.path and len(node.help.split()) < 3:
            missing.append(f"{node.command}: command help {node.help!r}")
        for action in options(node.parser):
            text = action.help or ""
            if text == argparse.SUPPRESS or len(text.split()) < 3:
                missing.append(f"{node.command} {action.option_strings or action.dest}: {text!r}")
    assert not missing, "\n".join(missing)


def test_a_repeatable_option_says_it_repeats_and_is_not_shown_as_a_list() -> None:
    for node in NODES:
        for action in options(node.parser):
            if isinstance(action, argparse._AppendAction):
                assert "repeat" in (action.help or ""), (node.command, action.option_strings)
                assert "..." not in str(action.metavar), (node.command, action.option_strings)


def test_top_level_help_is_written_for_people_not_the_module_docstring() -> None:
    text = build_parser().format_help()
    assert "``" not in text and "translated here" not in text
    for needle in ("ASSAY_URL", "ASSAY_TOKEN", "exit codes", "man assay"):
        assert needle in text


def test_token_file_help_says_where_the_token_comes_from() -> None:
    """It used to say its default was $ASSAY_TOKEN, which holds a token, not a file."""
    helps = {a.help for n in NODES for a in options(n.parser) if "--token-file" in a.option_strings}
    assert helps, "no command has --token-file"
    for text in helps:
        assert text and "default $ASSAY_TOKEN " not in text and "default $ASSAY_TOKEN)" not in text
        assert "$ASSAY_TOKEN_FILE" in text or "ASSAY" not in text, text


def _readme_cli_rows() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## The CLI\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `(assay [^`]*)` \|", section, re.MULTILINE)


def test_readme_cli_table_lists_every_command_and_no_other() -> None:
    rows = _readme_cli_rows()
    leaves = {" ".join(n.path) for n in LEAVES}
    listed = set()
    for row in rows:
        words = row.split()[1:]
        # The command is the longest run of leading words that names a leaf.
        names = [" ".join(words[:k]) for k in range(len(words), 0, -1)]
        found = next((n for n in names if n in leaves), None)
        assert found is not None, f"README lists a command the parser has not: {row}"
        listed.add(found)
    assert leaves <= listed, f"README's CLI table misses: {sorted(leaves - listed)}"


def _generate(out: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """What the Debian package runs, run the same way."""
    man, comp = out / "man", out / "completion"
    subprocess.run(
        [sys.executable, "-m", "assay.cli.docs", "--man", str(man), "--completion", str(comp)],
        check=True,
        capture_output=True,
        timeout=120,
        env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000", "PYTHONHASHSEED": str(seed)},
    )
    return man, comp


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _generate(tmp_path_factory.mktemp("docs"))


def test_one_man_page_per_command_and_both_completions(generated: tuple[Path, Path]) -> None:
    man, comp = generated
    assert {p.name for p in man.iterdir()} == {f"{n.page}.1" for n in NODES}
    assert {p.name for p in comp.iterdir()} == {"assay", "_assay"}
    assert (man / "assay.1").read_text().startswith('.TH ASSAY 1 "2023-11-14" "assay ')


def test_the_output_depends_on_the_source_only(
    generated: tuple[Path, Path], tmp_path: Path
) -> None:
    """Another hash seed (no set or dict order may leak into the output), same bytes."""
    again = _generate(tmp_path, seed=7)
    for first, second in zip(generated, again, strict=True):
        assert {p.name: p.read_bytes() for p in first.iterdir()} == {
            p.name: p.read_bytes() for p in second.iterdir()
        }


def roff_escape(text: str) -> str:
    return text.replace("-", "\\-")


def commands(parser: argparse.ArgumentParser) -> list[str]:
    """Every subcommand path the parser accepts, e.g. ``token create``, searched here
    without ``docs.walk``, so the generator's own walk is checked against another."""
    found: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append(name)
                found += [f"{name} {deeper}" for deeper in commands(sub)]
    return found


def test_every_command_of_the_parser_has_a_page_and_is_completed(
    generated: tuple[Path, Path],
) -> None:
    man, comp = generated
    bash, zsh = (comp / "assay").read_text(), (comp / "_assay").read_text()
    names = commands(build_parser())
    assert len(names) > 10, names
    for name in names:
        page = man / f"assay-{name.replace(' ', '-')}.1"
        assert page.is_file(), name
        # The header names the command and the date SOURCE_DATE_EPOCH gives.
        head = page.read_text().splitlines()[0]
        title = "ASSAY-" + name.upper().replace(" ", "-")
        assert head.startswith(f'.TH {roff_escape(title)} 1 "2023-11-14" "assay '), head
        last = name.split()[-1]
        assert last in bash and last in zsh, name


def test_the_python_interface_writes_the_same_files(tmp_path: Path) -> None:
    """``manpages`` and ``completions``, as packaging/build-deb.sh may call them."""
    pages = docs.manpages(tmp_path / "man")
    assert sorted(p.name for p in pages) == sorted(f"{n.page}.1" for n in NODES)
    assert sorted(p.name for p in docs.completions(tmp_path / "comp")) == ["_assay", "assay"]


def test_the_module_refuses_to_do_nothing() -> None:
    with pytest.raises(SystemExit) as exc:
        docs.main([])
    assert exc.value.code == 2


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_every_man_page_renders_without_warnings_and_names_every_option(
    generated: tuple[Path, Path],
) -> None:
    man, _ = generated
    for node in NODES:
        page = man / f"{node.page}.1"
        proc = subprocess.run(
            ["groff", "-man", "-Tutf8", "-ww", "-P-c", "-P-b", "-P-u", str(page)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0 and not proc.stderr, (page, proc.stderr)
        text = proc.stdout.replace("\u2010", "-").replace("\u2212", "-")
        assert node.page in text
        for action in options(node.parser):
            for flag in action.option_strings:
                assert flag in text, (node.page, flag)
            if not action.option_strings:
                assert str(action.metavar or action.dest) in text, (node.page, action.dest)
        for child in node.children:
            assert f"{node.page}-{child}(1)" in text, (node.page, child)


@pytest.mark.skipif(shutil.which("man") is None, reason="man is not installed")
def test_every_man_page_renders_through_man_without_warnings(
    generated: tuple[Path, Path],
) -> None:
    """What an operator runs (``man -l``), not only groff: man-db's preprocessors and
    its own warnings too."""
    man, _ = generated
    for page in sorted(man.iterdir()):
        proc = subprocess.run(
            ["man", "--warnings", "-E", "UTF-8", "-l", str(page)],
            env={**os.environ, "MANWIDTH": "80", "MAN_KEEP_STDERR": "1", "LC_ALL": "C.UTF-8"},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == 0 and proc.stderr.strip() == "", (page.name, proc.stderr)
        assert "NAME" in proc.stdout and "SYNOPSIS" in proc.stdout, page.name


def _complete(script: Path, words: list[str]) -> list[str]:
    """What the completion offers for ``words`` (the last one being completed)."""
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    program = (
        f"source '{script}'; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _assay; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    proc = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_completion_offers_every_subcommand_option_and_choice(generated: tuple[Path, Path]) -> None:
    _, comp = generated
    script = comp / "assay"
    for node in NODES:
        words = ["assay", *node.path]
        if node.children:
            assert _complete(script, [*words, ""]) == list(node.children), node.command
        flags = {s for a in options(node.parser) for s in a.option_strings if s.startswith("--")}
        assert set(_complete(script, [*words, "--"])) == flags, node.command
        for action in options(node.parser):
            if action.choices and action.option_strings:
                offered = _complete(script, [*words, action.option_strings[-1], ""])
                assert offered == [str(c) for c in action.choices], (node.command, action.dest)
    # A prefix narrows; a top-level flag before the command does not get in the way.
    assert _complete(script, ["assay", "--debug", "relay", "ser"]) == ["serve"]


ZSH_STUBS = """
compadd() { local seen=0 a; for a in "$@"; do
    if (( seen )); then print -r -- "$a"; elif [[ $a == -- ]]; then seen=1; fi; done }
_files() { print -r -- "<files $*>"; }
"""


def _zsh_complete(script: Path, words: list[str]) -> list[str]:
    """What the zsh function offers (``compadd`` and ``_files`` replaced by printers:
    zsh itself then filters by the prefix typed, so all candidates are listed)."""
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    program = f"{ZSH_STUBS}\nwords=({quoted}); CURRENT={len(words)}; source '{script}'"
    proc = subprocess.run(
        ["zsh", "-f", "-c", program], capture_output=True, text=True, timeout=30, check=False
    )
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    return [line for line in proc.stdout.splitlines() if line]


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completion_offers_what_bash_offers(
    generated: tuple[Path, Path], tmp_path: Path
) -> None:
    _, comp = generated
    script = comp / "_assay"
    for node in NODES:
        words = ["assay", *node.path]
        if node.children:
            assert _zsh_complete(script, [*words, ""]) == list(node.children), node.command
        flags = {s for a in options(node.parser) for s in a.option_strings}
        assert set(_zsh_complete(script, [*words, "-"])) == flags, node.command
        for action in options(node.parser):
            if action.choices and action.option_strings:
                offered = _zsh_complete(script, [*words, action.option_strings[-1], ""])
                assert offered == [str(c) for c in action.choices], (node.command, action.dest)
    assert _zsh_complete(script, ["assay", "fetch", "-o", ""]) == ["<files >"]
    assert _zsh_complete(script, ["assay", "keys", "generate", "--out", ""]) == ["<files -/>"]
    # compinit finds it on $fpath and binds it to the command.
    program = (
        f"fpath=('{comp}' $fpath); autoload -Uz compinit; "
        f"compinit -u -d '{tmp_path}/zcompdump'; print -r -- ${{_comps[assay]}}"
    )
    proc = subprocess.run(
        ["zsh", "-f", "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    assert proc.stdout.strip() == "_assay", proc.stdout + proc.stderr


def _system_page() -> str:
    """assay-system.8, as packaging/build-deb.sh makes it (the same generator)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "system_manpage", ROOT / "packaging" / "system_manpage.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page: str = module.render(ROOT / "packaging" / "assay-system")
    return page


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_the_assay_system_page_renders_and_names_every_subcommand_and_option() -> None:
    loader = importlib.machinery.SourceFileLoader(
        "assay_system_doc", str(ROOT / "packaging" / "assay-system")
    )
    spec = importlib.util.spec_from_loader("assay_system_doc", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    parser = module.build_parser()
    page = _system_page()
    assert page.startswith(".TH ASSAY\\-SYSTEM 8 ")
    proc = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-P-c", "-P-b", "-P-u"],
        input=page, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 0 and not proc.stderr, proc.stderr
    text = proc.stdout.replace("\u2010", "-").replace("\u2212", "-")
    for node in walk(parser):
        assert " ".join(("assay-system", *node.path)) in text, node.path
        for action in options(node.parser):
            assert action.help, (node.path, action.dest)  # every option says what it does
            for flag in action.option_strings:
                assert flag in text, (node.path, flag)
    for needle in ("FILES", "sysusers.d/assay.conf", "assay-init-system", "SEE ALSO"):
        assert needle in text, needle
