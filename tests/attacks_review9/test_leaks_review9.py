"""Review 9: what the daemon writes or answers beyond what it should.

Debug prints left in the request path write a line to the service's stderr (the
journal) for every request any local process sends, with no token: an unauthenticated
log flood, outside the audit log's bounds. And a problem answer that echoes the caller's
path whole (``detail`` and ``instance``) reflects up to the header limit back.
"""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Deployment

pytestmark = pytest.mark.e2e


def test_unauthenticated_requests_write_no_debug_lines_to_stderr(deployment: Deployment) -> None:
    with deployment.client(None) as c:
        for _ in range(20):
            c.get("/healthz")
            c.get("/v1/artifacts")
    deployment.stop()
    text = deployment.stderr()
    assert "DBG" not in text, [line for line in text.splitlines() if "DBG" in line][:5]


def test_problem_answer_does_not_reflect_an_unbounded_caller_path(deployment: Deployment) -> None:
    # The audit record bounds the path (truncated and marked); the answer should too.
    with deployment.client() as c:
        r = c.get("/v1/artifacts/" + "a" * 60_000)
    assert r.status_code == 400
    assert r.headers["content-type"] == "application/problem+json"
    assert len(r.content) <= 8 * 1024, f"{len(r.content)} bytes of answer to a 60 KB path"


def test_healthz_and_readyz_give_no_more_than_ready_or_not(deployment: Deployment) -> None:
    r = httpx.get(f"{deployment.url}/readyz", timeout=10)
    assert set(r.json()) <= {"ready", "failing", "status"}
