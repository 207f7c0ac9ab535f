"""Review 9: the relay shares core/web.py, so a websocket upgrade evades its audit too."""

from __future__ import annotations

import time
from pathlib import Path

from tests.attacks_review9.test_audit_evasion_review9 import status_of, websocket_head
from tests.relay.conftest import build_env
from tests.relay.test_e2e import pytestmark as e2e_marks
from tests.relay.test_e2e import running_relay

pytestmark = e2e_marks

RECORD = b"/v1/datasets/civil/entities/household/records/H0000001"


def audit_lines(audit_dir: Path) -> int:
    return sum(f.read_bytes().count(b"\n") for f in audit_dir.glob("audit*.jsonl") if f.is_file())


def test_relay_websocket_upgrade_is_refused_with_a_record(tmp_path: Path) -> None:
    env = build_env(tmp_path, people=20)
    audit_dir = Path(env.doc["audit"]["dir"])
    log = tmp_path / "relay.log"
    with running_relay(env, log) as (url, _proc):
        port = int(url.rpartition(":")[2])
        before = audit_lines(audit_dir)
        statuses = [status_of(port, websocket_head(t)) for t in (RECORD, b"/v1/datasets")]
        time.sleep(0.5)  # bounded settle; the record precedes the answer
        after = audit_lines(audit_dir)
    assert all(400 <= s < 500 for s in statuses), statuses
    assert after == before + 2, f"{after - before} records for 2 requests"
    assert "Traceback" not in log.read_text(errors="replace")
