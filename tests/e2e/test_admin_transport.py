"""The admin listener's transport is guarded like the public one's, with its own table.

Raw sockets against the real registry: a head trickled a byte at a time is cut at the
admin listener's ``header_read_timeout_seconds``; past its ``max_connections`` an idle
admin connection is displaced, while the public listener (its own table) is untouched;
a head the HTTP parser refuses gets a problem and a record marked as the admin one's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Deployment, free_port, init_deployment
from tests.e2e.wire import closed_by_peer, connect, connect_unix, response, trickle_until_closed

pytestmark = pytest.mark.e2e

ASK = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture
def guarded(tmp_path: Path) -> Iterator[tuple[Deployment, int]]:
    dep = init_deployment(tmp_path)
    port = free_port()
    dep.config.write_text(
        dep.config.read_text()
        + f"admin:\n  bind: 127.0.0.1:{port}\n  unix_socket: state/admin.sock\n"
        "  max_connections: 2\n  header_read_timeout_seconds: 1\n"
        "  keep_alive_timeout_seconds: 30\n"
    )
    dep.start()
    try:
        yield dep, port
    finally:
        dep.stop()


def test_a_trickled_head_is_cut_at_the_admin_header_timeout(
    guarded: tuple[Deployment, int],
) -> None:
    _dep, port = guarded
    sock = connect(port)
    try:
        head = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
        assert trickle_until_closed(sock, head, pause=0.1, steps=200)
    finally:
        sock.close()


def test_idle_admin_connections_are_displaced_at_the_admin_cap_only(
    guarded: tuple[Deployment, int],
) -> None:
    dep, port = guarded
    public = [connect(dep.port) for _ in range(3)]  # the public table: not the admin one's
    first = connect(port)
    second = connect_unix(dep.dir / "state" / "admin.sock")  # TCP and Unix: one table
    try:
        # Each answered once, so each is admitted and idle, ``first`` the longest.
        for sock in (first, second):
            sock.sendall(ASK)
            assert response(sock)[0] == 401
        third = connect(port)
        try:
            third.sendall(ASK)
            assert response(third)[0] == 401
            assert closed_by_peer(first, within=10)
            assert not closed_by_peer(second, within=0.5)
            assert not closed_by_peer(public[0], within=0.5)
        finally:
            third.close()
    finally:
        for s in [first, second, *public]:
            s.close()
    with httpx.Client(base_url=dep.url, timeout=30) as c:
        assert c.get("/healthz").status_code == 200


def test_a_head_the_parser_refuses_is_answered_and_recorded_as_admin(
    guarded: tuple[Deployment, int],
) -> None:
    dep, port = guarded
    sock = connect(port)
    try:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n")
        status, headers, body = response(sock)
    finally:
        sock.close()
    assert status == 400
    assert headers["content-type"] == "application/problem+json"
    assert json.loads(body)["status"] == 400
    dep.stop()
    refused = [r for r in dep.audit_records() if r["action"] == "http.refused"]
    assert len(refused) == 1 and refused[0]["extra"]["listener"] == "admin"
