"""Protocol switches against the real registry: refused, recorded, the connection kept.

hypercorn answered a WebSocket handshake with a bare 500 (a ``websocket`` scope no route
served) and one it judged malformed (no key, version 8) with a bare 400 of its own;
neither left a record. Every handshake, well-formed or not, now reaches the edge as the
HTTP/1.1 request it is and is refused there: 400 ``request.upgrade_refused``, one
record, and h11, seeing no 101, keeps the connection for the next request.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import h11
import pytest

from tests.conftest import Deployment, init_deployment

pytestmark = pytest.mark.e2e

KEY = (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ==")
V13 = (b"Sec-WebSocket-Version", b"13")
HANDSHAKES = {
    "valid": (b"GET", [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"), KEY, V13]),
    "no_key": (b"GET", [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"), V13]),
    "version_8": (
        b"GET",
        [
            (b"Connection", b"Upgrade"),
            (b"Upgrade", b"websocket"),
            KEY,
            (b"Sec-WebSocket-Version", b"8"),
        ],
    ),
    "post": (b"POST", [(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"), KEY, V13]),
    "token_list": (
        b"GET",
        [(b"Connection", b"keep-alive, Upgrade"), (b"Upgrade", b"h2c, WebSocket/13"), KEY, V13],
    ),
    "split_fields": (
        b"GET",
        [
            (b"Connection", b"keep-alive"),
            (b"Connection", b"upgrade"),
            (b"Upgrade", b"websocket"),
            KEY,
            V13,
        ],
    ),
}


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = init_deployment(tmp_path_factory.mktemp("upgrade"), max_bytes=1024 * 1024)
    d.start()
    try:
        yield d
    finally:
        d.stop()


def two_requests(
    port: int, method: bytes, headers: list[tuple[bytes, bytes]]
) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """The handshake, then ``GET /healthz`` on the same connection: both answers."""
    conn = h11.Connection(h11.CLIENT)
    out: list[tuple[int, dict[bytes, bytes], bytes]] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        for m, target, extra in ((method, b"/v1/artifacts", headers), (b"GET", b"/healthz", [])):
            sock.sendall(conn.send(h11.Request(method=m, target=target,
                                               headers=[(b"Host", b"x"), *extra])))  # fmt: skip
            sock.sendall(conn.send(h11.EndOfMessage()))
            status, head, body = 0, {}, b""
            for _ in range(1000):  # bounded: one answer's events
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(sock.recv(65536))
                elif isinstance(event, h11.Response):
                    status, head = event.status_code, dict(event.headers)
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
                else:
                    raise AssertionError(f"unexpected {event!r}")
            out.append((status, head, body))
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                break
            conn.start_next_cycle()
    return out


@pytest.mark.parametrize("case", sorted(HANDSHAKES))
def test_every_websocket_handshake_is_refused_recorded_and_the_connection_stays_http(
    dep: Deployment, case: str
) -> None:
    method, headers = HANDSHAKES[case]
    before = len(dep.audit_records())
    answers = two_requests(dep.port, method, headers)
    assert len(answers) == 2, answers
    (status, head, body), (next_status, _, _) = answers
    assert status == 400, (case, status, body[:200])
    assert head[b"content-type"] == b"application/problem+json"
    assert b'"code":"request.upgrade_refused"' in body
    assert next_status == 200
    new = dep.audit_records()[before:]
    assert [r["error_code"] for r in new] == ["request.upgrade_refused", None], new
    assert new[0]["request_id"] == head[b"x-request-id"].decode()
    assert "Traceback" not in dep.stderr()


def test_upgrade_without_the_connection_option_is_an_ordinary_request(dep: Deployment) -> None:
    """RFC 9110 7.8: ``Upgrade`` without ``Connection: upgrade`` is ignored, so served."""
    answers = two_requests(dep.port, b"GET", [(b"Upgrade", b"websocket"), KEY, V13])
    assert [a[0] for a in answers] == [401, 200]
