"""What ``assay audit verify`` tells a person: no false alarms, and no false hints.

The key hint ("is --key-file the log's key?") is only for a log in which every record
fails its HMAC; one edited record among others is a break in the log and says nothing
about the key, wherever in the log it sits.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assay.cli.admin import init_deployment
from assay.cli.main import main

HINT = "is --key-file the log's key?"


def _deployment_with_records(tmp_path: Path, tokens: int) -> tuple[Path, Path]:
    """A deployment whose audit log has ``tokens + 1`` records (each offline token
    change is audited); returns the log and its HMAC key."""
    init_deployment(tmp_path / "d")
    config = tmp_path / "d" / "config.yaml"
    for i in range(tokens):
        code = main(["token", "create", "--config", str(config), "--id", f"t{i}",
                     "--scope", "artifacts:read", "--json"])  # fmt: skip
        assert code == 0
    return tmp_path / "d" / "state" / "audit" / "audit.jsonl", tmp_path / "d" / "secrets" / (
        "audit-hmac.key"
    )


def _edit_line(log: Path, index: int) -> None:
    """Change one record's content, keeping it valid JSON with its old hashes."""
    lines = log.read_text().splitlines(keepends=True)
    record = json.loads(lines[index])
    record["target"] = f"edited-{index}"
    lines[index] = json.dumps(record, separators=(",", ":")) + "\n"
    log.write_text("".join(lines))


def test_clean_log_verifies_without_a_key_mismatch_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, key = _deployment_with_records(tmp_path, 0)
    assert main(["audit", "verify", str(log), "--key-file", str(key)]) == 0
    out = capsys.readouterr().out
    assert "intact" in out and "hint" not in out


def test_wrong_key_gets_the_hint_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, _key = _deployment_with_records(tmp_path, 4)
    capsys.readouterr()
    wrong = tmp_path / "wrong.key"
    wrong.write_text("f" * 64)
    wrong.chmod(0o600)
    assert main(["audit", "verify", str(log), "--key-file", str(wrong)]) == 1
    out = capsys.readouterr().out
    assert "BROKEN: 5 break(s)" in out and f"every record fails its HMAC; {HINT}" in out


@pytest.mark.parametrize("index", [0, 2, 4], ids=["first", "middle", "last"])
def test_one_edited_record_is_one_break_and_no_key_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], index: int
) -> None:
    log, key = _deployment_with_records(tmp_path, 4)
    _edit_line(log, index)
    capsys.readouterr()
    assert main(["audit", "verify", str(log), "--key-file", str(key)]) == 1
    out = capsys.readouterr().out
    assert "BROKEN: 1 break(s)" in out and f"self_mismatch at seq {index + 1}" in out
    assert "hint" not in out, out


def test_a_single_record_log_that_fails_names_both_causes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log, key = _deployment_with_records(tmp_path, 0)
    _edit_line(log, 0)
    capsys.readouterr()
    assert main(["audit", "verify", str(log), "--key-file", str(key)]) == 1
    out = capsys.readouterr().out
    assert HINT in out and "the record was altered" in out and "every record" not in out
