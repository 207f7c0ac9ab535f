"""A search for a request that leaves no record, or a 5xx, on the real registry daemon.

Hypothesis draws raw requests (``tests.attacks``: any method, path, query and the headers
that reach records, with or without a real token, sometimes bytes the HTTP parser must
refuse) and sends each over its own connection to the daemon on loopback. Property: an
answer comes, it is not a server error (501 is h11's answer to a transfer coding it does
not know, a refusal), and the audit log grew by exactly one line. The log verifies at
the end. Bounded: a fixed number of examples, each one connection with a timeout.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings

from tests.attacks import request_strategy
from tests.conftest import Deployment, init_deployment
from tests.e2e.test_audit_edge_attacks import record_count, verify_log
from tests.rawhttp import exchange

pytestmark = pytest.mark.e2e

DIGEST = "sha256:" + "ab" * 32
ROUTES = [
    "/healthz", "/readyz", "/v1/status", "/openapi.json", "/v1/artifacts",
    f"/v1/artifacts/{DIGEST}", f"/v1/artifacts/{DIGEST}/content",
    f"/v1/artifacts/{DIGEST}/promote", f"/v1/artifacts/{DIGEST}/verify", "/v1/sweep",
    "/v1/trusted/m/one",
]  # fmt: skip
NAMES = ["name", "meta", "digest", "state"]
SEARCH = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = init_deployment(tmp_path_factory.mktemp("search"), max_bytes=1024 * 1024)
    d.start()
    try:
        yield d
    finally:
        d.stop()
        verify_log(d)


@pytest.fixture(scope="module")
def credentials(dep: Deployment) -> list[tuple[bytes, bytes]]:
    return [(b"Authorization", b"Bearer " + dep.admin_token.encode())]


def test_no_request_escapes_its_record_or_gets_a_server_error(
    dep: Deployment, credentials: list[tuple[bytes, bytes]]
) -> None:
    seen: Counter[int] = Counter()

    @SEARCH
    @given(raw=request_strategy(ROUTES, credentials, NAMES))
    def one(raw: bytes) -> None:
        before = record_count(dep)
        got = exchange(dep.port, raw)
        assert got is not None, "closed without an answer"
        assert got.status < 500 or got.status == 501, (got.status, got.body[:300])
        assert record_count(dep) == before + 1, got
        seen[got.status] += 1

    one()
    # Not vacuous: the search reached the app (allowed, unauthenticated, unrouted) and
    # the parser's refusals alike.
    assert {200, 401, 404, 400} <= set(seen), seen
    refused = [r for r in dep.audit_records() if r["action"] == "http.refused"]
    assert refused and all(r["route"] is None for r in refused)
