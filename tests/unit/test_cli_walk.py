"""Every command, found by walking the parser, over a table of bad inputs: no traceback.

The commands are discovered from ``build_parser()`` (nested subcommands too), so a
command someone adds is walked without this file changing. For each one, its slots
(positionals and required options) get plausible values, then one slot at a time gets
each bad value: a missing path, a directory where a file goes, a FIFO with no writer
(which must not block), an output under a missing directory or a file, an empty, a
huge and a unicode string; then the whole
command gets an unknown flag, no arguments, ``--url notaurl``, a closed ``--url`` port
and a missing ``--token-file``, each with and without ``--json``.

Each run is in-process, in a fresh working directory, with ``$ASSAY_URL`` on a closed
port; nothing may start a server (``run_server`` is replaced by a fake that records the
attempt, and the test fails if any run reaches it). Every run must end with a
documented exit code, no "Traceback" anywhere, an error that is never
``internal.error`` (nothing unexpected) and, with ``--json``, stdout that is one JSON
document: the problem, with its ``code``, whenever the command failed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from assay.cli import servers
from assay.cli.errors import EXIT_CODES
from assay.cli.main import build_parser, main
from tests.conftest import free_port

#: Problem codes a bad input must never end in: they mean nothing typed the mistake.
UNTYPED = {"internal.error", "storage.failed", "http.error"}
LINE = re.compile(r"^assay: error \[([a-z0-9_.]+)\]: ", re.MULTILINE)


@dataclass(frozen=True)
class Slot:
    """A value a command needs: a positional or a required option."""

    flag: str | None  # None for a positional
    dest: str
    nargs: Any


def leaves(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every runnable command: ``(("relay", "serve"), its parser)``."""
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield path, parser
        return
    for name, child in subs[0].choices.items():
        yield from leaves(child, (*path, name))


def slots(parser: argparse.ArgumentParser) -> list[Slot]:
    out = []
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction | argparse._VersionAction):
            continue
        if not a.option_strings:
            out.append(Slot(None, a.dest, a.nargs))
        elif a.required and a.nargs != 0:
            out.append(Slot(a.option_strings[-1], a.dest, a.nargs))
    return out


def optional_files(parser: argparse.ArgumentParser) -> list[str]:
    """The optional options that name a file to read or write (metavar FILE or PATH)."""
    return [a.option_strings[-1] for a in parser._actions
            if a.option_strings and not a.required and a.metavar in ("FILE", "PATH")]  # fmt: skip


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


class Values:
    """Plausible values by what a slot is for, and the bad ones, under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir()
        self.file = root / "some-file.txt"
        self.file.write_text("not what any command expects\n")
        self.dir = root / "a-dir"
        self.dir.mkdir()
        self.fifo = root / "a-fifo"  # no writer: an open() that blocks on it hangs
        os.mkfifo(self.fifo)

    def plausible(self, slot: Slot) -> str:
        dest = slot.dest
        if dest in {"digest"}:
            return "sha256:" + "0" * 64
        if dest in {"seq", "people", "max_breaks"}:
            return "1"
        if dest in {"id"}:
            return "alice"
        if dest in {"name"}:
            return "demo/model"
        if dest in {"scope"}:
            return "artifacts:read"
        if dest in {"dir", "out"}:
            return str(self.root / f"new-{dest}")
        if dest in {"output"}:
            return str(self.root / "out.bin")
        if dest in {"reason", "note", "command", "args", "argv"}:
            return "x"
        return str(self.file)

    def bad(self) -> dict[str, str]:
        return {
            "missing": str(self.root / "no" / "such" / "thing"),
            "directory": str(self.dir),
            "fifo": str(self.fifo),
            "under-a-file": str(self.file / "child"),
            "empty": "",
            "huge": "h" * 100_000,
            "unicode": "ünï\u202ecödé\u200b✓",
            "not-utf8": os.fsdecode(b"bad\xff\xfename"),  # as Python decodes such argv
            "dash-leading": "-x",
        }


def argv_for(path: tuple[str, ...], values: dict[Slot, str]) -> list[str]:
    argv = list(path)
    for slot, value in values.items():
        if slot.flag is None:
            argv.append(value)
        else:
            argv.append(f"{slot.flag}={value}")  # '=' so a leading '-' stays a value
    return argv


#: Seconds any one run may take before it counts as hung.
HANG_SECONDS = 20


class Hung(Exception):
    """Raised by the alarm in a run that blocked."""


def _hung(signum: int, frame: Any) -> None:
    raise Hung("the command blocked")


@dataclass
class Run:
    argv: list[str]
    code: int
    out: str
    err: str


class Walker:
    def __init__(self, tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.tmp = tmp
        self.capsys = capsys
        self.count = 0

    def run(self, argv: list[str]) -> Run:
        self.count += 1
        cwd = self.tmp / f"run{self.count}"
        cwd.mkdir()
        old = Path.cwd()
        os.chdir(cwd)
        # A command that blocks (on the FIFO, say) is interrupted: the exception the
        # alarm raises comes out of main() as an untyped error, and check() fails it.
        previous = signal.signal(signal.SIGALRM, _hung)
        signal.alarm(HANG_SECONDS)
        try:
            code = main(argv)
        except SystemExit as exc:  # only --help / --version may exit this way
            code = exc.code if isinstance(exc.code, int) else 2
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
            os.chdir(old)
        captured = self.capsys.readouterr()
        return Run(argv, code, captured.out, captured.err)


def check(run: Run) -> None:
    where = (
        f"assay {' '.join(a[:60] for a in run.argv)} -> {run.code}\n{run.out[-800:]}\n"
        + (run.err[-800:])
    )
    assert run.code in EXIT_CODES, where
    assert "Traceback" not in run.out and "Traceback" not in run.err, where
    codes = LINE.findall(run.err)
    if "--json" in run.argv:
        doc = json.loads(run.out)  # one JSON document, whatever happened
        if run.code not in (0, 1) or (run.code == 1 and "error" in doc):
            assert isinstance(doc.get("error", {}).get("code"), str), where
            assert doc["exit_code"] == run.code, where
            codes.append(doc["error"]["code"])
    elif run.code not in (0, 1):
        assert len(codes) == 1, where  # one error line
        assert all(c.isprintable() for c in run.err.replace("\n", "")), where  # no escapes
    assert not UNTYPED & set(codes), where


@pytest.fixture
def walker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Walker:
    served: list[Any] = []

    def no_server(run: Any, loaded: Any) -> int:
        served.append(loaded)
        raise AssertionError("a bad input reached run_server")

    monkeypatch.setattr(servers, "run_server", no_server)
    for name in ("ASSAY_TOKEN", "ASSAY_TOKEN_FILE", "ASSAY_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ASSAY_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("ASSAY_RELAY_BIND", f"127.0.0.1:{free_port()}")
    # relay init over 100,000 people is the real example; 60 are plenty to walk it.
    from assay.relay import synthetic

    real = synthetic.generate
    monkeypatch.setattr(synthetic, "generate", lambda people, seed: real(min(people, 60), seed))
    w = Walker(tmp_path, capsys)
    yield w  # type: ignore[misc]
    assert not served, "a walked command tried to start a server"


def test_the_walk_finds_every_command_group() -> None:
    found = {p for p, _ in leaves(build_parser())}
    for expected in [("add",), ("relay", "serve"), ("audit", "verify-proof"), ("keys", "generate"),
                     ("token", "revoke"), ("receipt", "verify"), ("relay", "init")]:  # fmt: skip
        assert expected in found


def test_no_command_shows_a_traceback_for_bad_input(walker: Walker) -> None:
    parser = build_parser()
    for path, leaf in leaves(parser):
        values = Values(walker.tmp / ("v-" + "-".join(path)))
        base = {s: values.plausible(s) for s in slots(leaf)}
        opts = options(leaf)
        variants: list[list[str]] = [list(path), [*path, "--no-such-flag"]]
        for slot in base:
            for bad in values.bad().values():
                if slot.nargs == argparse.REMAINDER:
                    continue
                variants.append(argv_for(path, {**base, slot: bad}))
        whole = argv_for(path, base)
        variants.append(whole)
        if "--url" in opts:
            variants += [[*whole, "--url", "notaurl"], [*whole, "--url=http://[::1"],
                         [*whole, "--url", f"http://127.0.0.1:{free_port()}"]]  # fmt: skip
        if "--token-file" in opts:
            variants.append([*whole, "--token-file", str(values.root / "missing-token")])
            variants.append([*whole, "--token-file", str(values.dir)])
            variants.append([*whole, "--token-file", str(values.fifo)])  # must not block
        for flag in optional_files(leaf):  # every FILE option, not only required ones
            variants.append([*whole, flag, str(values.fifo)])
            variants.append([*whole, flag, str(values.dir)])
        for argv in variants:
            check(walker.run(argv))
            if "--json" in opts or argv == list(path):
                check(walker.run([*argv, "--json"]))
    assert walker.count > 100


def test_top_level_mistakes_are_usage_errors(walker: Walker) -> None:
    for argv in ([], ["no-such-command"], ["--no-such-flag"], ["--json"], ["relay"]):
        run = walker.run(argv)
        check(run)
        assert run.code == 2
