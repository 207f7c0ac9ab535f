"""What ``assay audit verify`` tells a person: no false alarms on a clean log."""

from __future__ import annotations

from pathlib import Path

import pytest

from assay.cli.admin import init_deployment
from assay.cli.main import main


def test_clean_log_verifies_without_a_key_mismatch_hint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init_deployment(tmp_path / "d")
    log = tmp_path / "d" / "state" / "audit" / "audit.jsonl"
    key = tmp_path / "d" / "secrets" / "audit-hmac.key"
    assert main(["audit", "verify", str(log), "--key-file", str(key)]) == 0
    out = capsys.readouterr().out
    assert "intact" in out and "hint" not in out


def test_wrong_key_gets_the_hint_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    init_deployment(tmp_path / "d")
    log = tmp_path / "d" / "state" / "audit" / "audit.jsonl"
    wrong = tmp_path / "wrong.key"
    wrong.write_text("f" * 64)
    wrong.chmod(0o600)
    assert main(["audit", "verify", str(log), "--key-file", str(wrong)]) == 1
    assert "is --key-file the log's key?" in capsys.readouterr().out
