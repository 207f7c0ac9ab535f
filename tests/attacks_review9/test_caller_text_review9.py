"""Review 9: caller text in records (issue 9 point 3, "record fields holding caller data").

The relay replaces an ``X-Request-Id`` that is not visible ASCII and refuses or drops a
non-printable ``X-Purpose`` (THREAT_MODEL T14, docs/relay.md). The registry, sharing
core/web.py, copies both into its audit record verbatim, control characters and all
(ANSI escapes reach whoever prints ``request_id`` or ``purpose`` from the log, and the
request id is echoed back in a response header). Unauthenticated: the 401's record has it.
"""

from __future__ import annotations

import pytest

from tests.conftest import Deployment
from tests.rawhttp import exchange

pytestmark = pytest.mark.e2e


def printable_ascii(text: str) -> bool:
    return all(0x20 < ord(ch) < 0x7F for ch in text)


def test_request_id_and_purpose_with_control_bytes_never_reach_the_record(
    deployment: Deployment,
) -> None:
    raw = (
        b"GET /v1/artifacts HTTP/1.1\r\nHost: x\r\n"
        b"X-Request-Id: a\x1b[31mb\x7f\xff\tc\r\n"
        b"X-Purpose: p\x1b[2J\xff\r\nConnection: close\r\n\r\n"
    )
    r = exchange(deployment.port, raw)
    assert r is not None and r.status == 401
    assert printable_ascii(r.headers["x-request-id"]), repr(r.headers["x-request-id"])
    record = deployment.audit_records()[-1]
    assert printable_ascii(record["request_id"]), repr(record["request_id"])
    purpose = record.get("purpose")
    assert purpose is None or purpose.isprintable(), repr(purpose)
