"""Generated command lines of odd bytes: never a traceback, never an undocumented exit.

The walk (``test_cli_walk``) tries a fixed table of bad values; this searches. Hypothesis
picks a command (from the parser, so a new one is searched too), one of its slots and
the raw bytes to put there (any bytes a real argv can carry: not UTF-8, control
characters, a lone continuation byte, a leading dash), decoded as Python decodes argv
(``os.fsdecode``: undecodable bytes become lone surrogates), or a whole argv of such
bytes. Every run must end as README's error contract says (``test_cli_walk.check``):
an exit code from the table, one typed error line (or one JSON problem with
``--json``), no traceback, never ``internal.error``.
"""

from __future__ import annotations

import argparse
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assay.cli.main import build_parser
from tests.unit.test_cli_walk import Slot, Values, Walker, argv_for, check, leaves, slots
from tests.unit.test_cli_walk import walker as walker  # the fixture, re-exported

#: Bytes an argv element can hold (execve forbids NUL), biased to the awkward ones.
AWKWARD = [b"\xff", b"\xfe\xff", b"\x80", b"\xc3", b"\xed\xa0\x80", b"a\x1b[2Jb",
           b"-\xff", b"--\xff", b"\xe2\x80\xae", b"name/\xff", b"k=\xff"]  # fmt: skip
ODD = st.one_of(st.binary(min_size=0, max_size=24), st.sampled_from(AWKWARD)).map(
    lambda b: b.replace(b"\x00", b"")
)
SLOW_OK = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]

COMMANDS = [(path, leaf) for path, leaf in leaves(build_parser())]


def _argv_of(path: tuple[str, ...], leaf: argparse.ArgumentParser, values: Values,
             slot_index: int, raw: bytes) -> list[str]:  # fmt: skip
    filled = [s for s in slots(leaf) if s.nargs != argparse.REMAINDER]
    base: dict[Slot, str] = {s: values.plausible(s) for s in filled}
    if filled:
        base[filled[slot_index % len(filled)]] = os.fsdecode(raw)
    return argv_for(path, base)


@settings(max_examples=150, deadline=None, suppress_health_check=SLOW_OK)
@given(
    command=st.sampled_from(COMMANDS),
    slot_index=st.integers(min_value=0, max_value=7),
    raw=ODD,
    as_json=st.booleans(),
)
def test_odd_bytes_in_any_slot_of_any_command_end_as_documented(
    walker: Walker,
    command: tuple[tuple[str, ...], argparse.ArgumentParser],
    slot_index: int,
    raw: bytes,
    as_json: bool,
) -> None:
    path, leaf = command
    values = Values(walker.tmp / f"v{walker.count}")
    argv = _argv_of(path, leaf, values, slot_index, raw)
    if as_json and any(a.option_strings == ["--json"] for a in leaf._actions):
        argv.append("--json")
    check(walker.run(argv))


@settings(max_examples=60, deadline=None, suppress_health_check=SLOW_OK)
@given(words=st.lists(ODD, min_size=0, max_size=4), as_json=st.booleans())
def test_an_argv_of_odd_bytes_ends_as_documented(
    walker: Walker, words: list[bytes], as_json: bool
) -> None:
    argv = [os.fsdecode(w) for w in words] + (["--json"] if as_json else [])
    check(walker.run(argv))
