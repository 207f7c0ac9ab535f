"""Review 9: a request that gets an answer and leaves no record (issue 9 point 3, next member).

hypercorn hands a request carrying ``Upgrade: websocket`` to the app as a *websocket*
scope, not an http one. Quart routes it, finds no websocket route, and its error handler
(core/web.py ``_http``) reads ``request.path`` outside a request context: RuntimeError,
traceback on stderr, a bare 500, and no audit record. Any local process, with no token,
on any route. The safe behaviour: a problem+json 4xx (or a 426/400) and exactly one record.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.conftest import Deployment, init_deployment

pytestmark = pytest.mark.e2e

ROUTES = [b"/v1/artifacts", b"/healthz", b"/readyz", b"/openapi.json", b"/nowhere"]


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = init_deployment(tmp_path_factory.mktemp("ws"), max_bytes=1024 * 1024)
    d.start()
    try:
        yield d
    finally:
        d.stop()


def record_count(dep: Deployment) -> int:
    return sum(
        f.read_bytes().count(b"\n") for f in dep.audit_dir.glob("audit*.jsonl") if f.is_file()
    )


def settled_count(dep: Deployment) -> int:
    last = record_count(dep)
    for _ in range(20):  # bounded: the record is written before the answer; allow a beat
        time.sleep(0.05)
        now = record_count(dep)
        if now == last:
            return now
        last = now
    return last


def websocket_head(target: bytes, extra: bytes = b"") -> bytes:
    return (
        b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n" + extra + b"\r\n"
    )


def status_of(port: int, data: bytes) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        head = b""
        for _ in range(64):  # bounded read of the status line
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
            if b"\r\n" in head:
                break
    assert head.startswith(b"HTTP/1.1 "), head[:100]
    return int(head.split(b" ", 2)[1])


@pytest.mark.parametrize("target", ROUTES)
def test_websocket_upgrade_is_refused_with_a_record(dep: Deployment, target: bytes) -> None:
    before = settled_count(dep)
    status = status_of(dep.port, websocket_head(target))
    assert 400 <= status < 500, f"{target!r}: websocket upgrade answered {status}"
    assert settled_count(dep) == before + 1, f"{target!r}: no audit record"


def test_authenticated_websocket_upgrade_is_refused_with_a_record(dep: Deployment) -> None:
    before = settled_count(dep)
    auth = b"Authorization: Bearer " + dep.admin_token.encode() + b"\r\n"
    status = status_of(dep.port, websocket_head(b"/v1/artifacts", auth))
    assert 400 <= status < 500, f"websocket upgrade answered {status}"
    assert settled_count(dep) == before + 1


def test_websocket_upgrade_leaves_no_traceback(dep: Deployment) -> None:
    status_of(dep.port, websocket_head(b"/v1/artifacts"))
    assert "Traceback" not in dep.stderr()
