"""The registry daemon's connection limits, attacked over raw sockets.

What a caller (often one without a token) can hold: connections that never send a byte,
heads that never end, connections kept open after their answer, downloads it abandons
or stops reading, and more connections than the daemon has descriptors. Each test holds
one of those and checks the daemon lets go, or keeps answering the others. The daemon's
own descriptors are counted in ``/proc/<pid>/fd``.
"""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import time

import pytest

from tests.conftest import Deployment
from tests.e2e.deployments import BIG, ST, Make, get, make, pid, trusted, wait_for
from tests.e2e.wire import (
    closed_by_peer,
    connect,
    connect_unix,
    fd_count,
    open_connections,
    response,
    settled,
    trickle_until_closed,
)

pytestmark = pytest.mark.e2e
__all__ = ["make"]  # the fixture, imported for pytest


# --- closing after the answer -------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "extra"),
    [("1.1", "Connection: close\r\n"), ("1.0", ""), ("1.1", "Connection: keep-alive, close\r\n")],
    ids=["http11-close", "http10", "token-list"],
)
def test_connection_close_is_honoured_after_the_answer(
    make: Make, version: str, extra: str
) -> None:
    dep = make(keep_alive_timeout_seconds=120)  # only honouring it can close
    with connect(dep.port) as sock:
        sock.sendall(get(dep, "/v1/status", extra=extra, version=version))
        status, _headers, _body = response(sock)
        assert status == 200
        assert closed_by_peer(sock)


def test_idle_keep_alive_connection_is_closed_after_the_timeout(make: Make) -> None:
    dep = make(keep_alive_timeout_seconds=1)
    with connect(dep.port) as sock:
        sock.sendall(get(dep, "/v1/status"))
        status, headers, _body = response(sock)
        assert status == 200 and headers.get("connection") != "close"
        assert closed_by_peer(sock)


def test_a_client_that_closes_after_keep_alive_answers_is_let_go_at_once(make: Make) -> None:
    """The common client: a few requests on one keep-alive connection, then it closes.
    The daemon must not hold that descriptor (or its slot) until the keep-alive timer."""
    dep = make(keep_alive_timeout_seconds=120)
    for _ in range(5):
        with connect(dep.port) as sock:
            for _ in range(3):
                sock.sendall(get(dep, "/v1/status"))
                assert response(sock)[0] == 200
    assert wait_for(lambda: open_connections(pid(dep), dep.port) == 0, rounds=100)


def test_connection_that_never_sends_a_byte_is_closed_after_the_keep_alive_timeout(
    make: Make,
) -> None:
    dep = make(keep_alive_timeout_seconds=1)
    with connect(dep.port) as sock:
        assert closed_by_peer(sock)


# --- heads that never end -----------------------------------------------------------------

SLOW_HEADS = {
    "hypercorn": b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 400,
    "direct-peek": b"POST /v1/artifacts?name=a HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 400,
}


@pytest.mark.parametrize("head", SLOW_HEADS.values(), ids=SLOW_HEADS.keys())
@pytest.mark.parametrize("after_a_request", [False, True], ids=["first", "second"])
def test_partial_head_is_cut_after_the_header_read_timeout(
    make: Make, head: bytes, after_a_request: bool
) -> None:
    dep = make(keep_alive_timeout_seconds=120, header_read_timeout_seconds=1)
    with connect(dep.port) as sock:
        if after_a_request:
            sock.sendall(get(dep, "/v1/status"))
            assert response(sock)[0] == 200
        # One byte every 0.1 s for up to 40 s: each byte is progress, none ends the head.
        assert trickle_until_closed(sock, head, pause=0.1, steps=len(head))


# --- downloads ------------------------------------------------------------------------------


def test_download_whose_client_stops_reading_is_cut_after_the_request_timeout(
    make: Make,
) -> None:
    dep = make(max_bytes=64 * 1024 * 1024, request_timeout_seconds=1)
    digest = trusted(dep, BIG, name="m/big")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.settimeout(15)
    with sock:
        sock.connect(("127.0.0.1", dep.port))
        sock.sendall(get(dep, f"/v1/artifacts/{digest}/content"))
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
        # Stop reading. The daemon's writes block; it must give the connection up.
        assert wait_for(lambda: open_connections(pid(dep), dep.port) == 0)
        received = 0
        while chunk := sock.recv(1024 * 1024):
            received += len(chunk)
        assert received < len(BIG)  # cut, not completed


def test_download_that_keeps_moving_outlives_the_request_timeout(make: Make) -> None:
    dep = make(max_bytes=64 * 1024 * 1024, request_timeout_seconds=1)
    digest = trusted(dep, BIG, name="m/big")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.settimeout(15)
    with sock:
        sock.connect(("127.0.0.1", dep.port))
        sock.sendall(get(dep, f"/v1/artifacts/{digest}/content", extra="Connection: close\r\n"))
        data = bytearray()
        for _ in range(10_000):  # ~128 KiB per 0.05 s: several seconds, always moving
            chunk = sock.recv(128 * 1024)
            if not chunk:
                break
            data += chunk
            time.sleep(0.05)
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert hashlib.sha256(body).hexdigest() == digest[7:]


def test_body_behind_an_early_refusal_cannot_hold_its_connection(make: Make) -> None:
    """No token, a chunked upload: the app answers 401 at once and never reads the body.
    hypercorn queues the body for the app until its queue is full, and then both its
    read loop and the finished app wait on that queue for good, with the socket open."""
    dep = make(max_connections=4, request_timeout_seconds=1)
    head = (
        b"POST /v1/artifacts?name=x HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + b"z" * 43 + b"\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"%x\r\n%s\r\n" % (65536, b"a" * 65536)
    held = []
    try:
        for _ in range(4):  # every slot
            sock = connect(dep.port)
            sock.sendall(head)
            sock.setblocking(False)
            for _ in range(100):  # as much body as the daemon takes
                try:
                    sock.send(chunk)
                except BlockingIOError:
                    time.sleep(0.02)
            held.append(sock)
        with dep.client() as c:  # the slots come back: the next caller is served
            assert wait_for(lambda: c.get("/v1/status").status_code == 200)
    finally:
        for sock in held:
            sock.close()


@pytest.mark.parametrize("chunked", [False, True], ids=["direct", "hypercorn"])
def test_upload_that_keeps_moving_outlives_the_request_timeout(make: Make, chunked: bool) -> None:
    dep = make(max_bytes=64 * 1024 * 1024, request_timeout_seconds=1)
    head = (
        "POST /v1/artifacts?name=slow%2Fbig&meta=source%3Dt&meta=license%3Dmit HTTP/1.1\r\n"
        f"Host: x\r\nAuthorization: Bearer {dep.admin_token}\r\n"
    ).encode()
    head += (
        b"Transfer-Encoding: chunked\r\n\r\n"
        if chunked
        else b"Content-Length: %d\r\n\r\n" % len(BIG)
    )
    piece = 512 * 1024
    with connect(dep.port) as sock:
        sock.sendall(head)
        for i in range(0, len(BIG), piece):  # 24 pieces, 0.15 s apart: ~3.6 s, always moving
            part = BIG[i : i + piece]
            sock.sendall(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
            time.sleep(0.15)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
        status, _headers, body = response(sock, "POST")
    assert status == 201, body
    assert json.loads(body)["artifact"]["digest"] == "sha256:" + hashlib.sha256(BIG).hexdigest()


@pytest.mark.parametrize("chunked", [False, True], ids=["direct", "hypercorn"])
def test_stalled_upload_is_cut_after_the_request_timeout_and_still_recorded(
    make: Make, chunked: bool
) -> None:
    dep = make(request_timeout_seconds=1)  # the upload stall timeout stays at 60 s
    head = (
        "POST /v1/artifacts?name=stall%2Fx&meta=source%3Dt&meta=license%3Dmit HTTP/1.1\r\n"
        f"Host: x\r\nAuthorization: Bearer {dep.admin_token}\r\n"
    ).encode()
    if chunked:
        head += b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s" % (len(ST), ST[:100])
    else:
        head += b"Content-Length: %d\r\n\r\n" % len(ST) + ST[:100]
    with connect(dep.port) as sock:
        sock.sendall(head)  # and then nothing
        assert wait_for(lambda: open_connections(pid(dep), dep.port) == 0)

    def recorded() -> bool:
        return any(
            r.get("route") == "POST /v1/artifacts" and r.get("error_code") == "request.incomplete"
            for r in dep.audit_records()
        )

    assert wait_for(recorded)
    assert list((dep.dir / "state" / "store" / "tmp").iterdir()) == []


# --- many connections ---------------------------------------------------------------------


@pytest.mark.parametrize("cap", [64, None], ids=["configured-cap", "default-cap-fitted"])
def test_idle_connections_cannot_starve_an_authenticated_request(
    make: Make, cap: int | None
) -> None:
    """300 connections without a request against a daemon with 256 descriptors. With the
    default cap (256) the daemon lowers it to what 256 descriptors allow (64), else the
    descriptors run out before the cap binds and accept fails instead."""
    keys: dict[str, object] = {
        "keep_alive_timeout_seconds": 120,
        "header_read_timeout_seconds": 120,
    }
    if cap is not None:
        keys["max_connections"] = cap
    dep = make(nofile=256, **keys)  # fewer descriptors than the attack's connections
    effective = cap or (256 - 64) // 3
    assert wait_for(lambda: open_connections(pid(dep), dep.port) == 0)
    baseline_fds = fd_count(pid(dep))
    held: list[socket.socket] = []
    try:
        for i in range(300):  # half silent, half a head that never ends
            sock = connect(dep.port)
            if i % 2:
                sock.sendall(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
            held.append(sock)
        with dep.client() as c:
            r = c.get("/v1/status", headers={"Connection": "close"})
            assert r.status_code == 200, r.text
        assert settled(lambda: open_connections(pid(dep), dep.port)) <= effective
        assert fd_count(pid(dep)) <= baseline_fds + effective  # every descriptor
        if cap is None:
            assert "serving at most 64 connections" in dep.stderr()
    finally:
        for sock in held:
            sock.close()


def test_connections_over_the_cap_get_a_fast_503_when_none_is_idle(make: Make) -> None:
    dep = make(max_connections=4, request_timeout_seconds=120)
    busy: list[socket.socket] = []
    head = (
        "POST /v1/artifacts?name=busy%2Fx&meta=source%3Dt&meta=license%3Dmit HTTP/1.1\r\n"
        f"Host: x\r\nAuthorization: Bearer {dep.admin_token}\r\n"
        f"Content-Length: {len(ST)}\r\n\r\n"
    ).encode()
    # The readiness probe's connection must be gone: at the cap, a connection still in
    # its request makes the newest, not yet read, connection the one displaced.
    assert wait_for(lambda: open_connections(pid(dep), dep.port) == 0)
    try:
        for _ in range(4):  # four uploads in flight, each waiting for the rest of its body
            sock = connect(dep.port)
            sock.sendall(head + ST[:10])
            busy.append(sock)
        assert wait_for(lambda: open_connections(pid(dep), dep.port) == 4)
        with connect(dep.port) as extra:
            extra.sendall(get(dep, "/v1/status"))
            status, headers, body = response(extra)
            assert status == 503
            assert headers["content-type"] == "application/problem+json"
            assert json.loads(body)["code"] == "server.busy"
            assert headers["retry-after"] and headers["connection"] == "close"
        busy[0].sendall(ST[10:])  # one finishes: a slot frees up
        assert response(busy[0], "POST")[0] == 201
        with dep.client() as c:
            assert wait_for(lambda: c.get("/v1/status").status_code == 200)
    finally:
        for sock in busy:
            sock.close()


def test_unix_socket_connections_obey_the_same_limits(make: Make) -> None:
    dep = make(unix_socket="state/assay.sock", keep_alive_timeout_seconds=1, max_connections=8)
    path = dep.dir / "state" / "assay.sock"
    with connect_unix(path) as sock:
        sock.sendall(get(dep, "/v1/status", extra="Connection: close\r\n"))
        assert response(sock)[0] == 200
        assert closed_by_peer(sock)
    held = [connect_unix(path) for _ in range(20)]
    try:
        with connect_unix(path) as sock:
            sock.sendall(get(dep, "/v1/status"))
            assert response(sock)[0] == 200
    finally:
        for sock in held:
            sock.close()


def test_sigterm_is_not_held_up_by_a_client_that_stopped_reading(make: Make) -> None:
    dep = make(max_bytes=64 * 1024 * 1024, request_timeout_seconds=600, shutdown_timeout_seconds=1)
    digest = trusted(dep, BIG, name="m/big")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    sock.settimeout(15)
    with sock:
        sock.connect(("127.0.0.1", dep.port))
        sock.sendall(get(dep, f"/v1/artifacts/{digest}/content"))
        assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
        assert dep.proc is not None
        dep.proc.send_signal(signal.SIGTERM)
        assert dep.proc.wait(timeout=30) == 0


# --- other protocols on the same port -------------------------------------------------------

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes.fromhex("000000040000000000")  # + SETTINGS
H2C_UPGRADE = (
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
    b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
)


@pytest.mark.parametrize("opening", [H2_PREFACE, H2C_UPGRADE], ids=["prior-knowledge", "h2c"])
def test_http2_is_not_spoken_so_the_limits_cannot_be_multiplexed_around(
    deployment: Deployment, opening: bytes
) -> None:
    with connect(deployment.port) as sock:
        sock.sendall(opening)
        first = sock.recv(65536)
    assert first.startswith(b"HTTP/1.1 ")  # never an h2 SETTINGS frame
    assert not first.startswith(b"HTTP/1.1 101")  # nor a switch to h2c
