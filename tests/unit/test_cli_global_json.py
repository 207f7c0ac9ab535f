"""``assay --json COMMAND ...`` is ``assay COMMAND ... --json``, for every command.

Differential over the parser: each command with a ``--json`` option is run both ways
with the same plausible arguments (a daemon on a closed port, files that do not parse),
in-process; both must print one JSON document and end with the same exit code and the
same problem code. Commands whose output is random (new keys) compare only those.
"""

from __future__ import annotations

import json

from assay.cli.main import build_parser
from tests.unit.test_cli_walk import Values, Walker, argv_for, check, leaves, slots
from tests.unit.test_cli_walk import walker as walker  # the fixture, re-exported


def _outcome(out: str) -> tuple[object, object]:
    doc = json.loads(out)
    if isinstance(doc, dict) and "error" in doc:
        return doc["exit_code"], doc["error"]["code"]
    return 0, None


def test_json_before_the_command_is_the_same_as_after_it(walker: Walker) -> None:
    compared = 0
    for path, leaf in leaves(build_parser()):
        if not any(a.option_strings == ["--json"] for a in leaf._actions):
            continue
        runs = []
        for placement in ("after", "before"):  # each in its own files: some create them
            values = Values(walker.tmp / f"v-{'-'.join(path)}-{placement}")
            argv = argv_for(path, {s: values.plausible(s) for s in slots(leaf)})
            runs.append(walker.run([*argv, "--json"] if placement == "after" else
                                   ["--json", *argv]))  # fmt: skip
        after, before = runs
        check(after)
        check(before)
        assert before.code == after.code, (argv, before, after)
        assert _outcome(before.out) == _outcome(after.out), argv
        compared += 1
    assert compared > 20
