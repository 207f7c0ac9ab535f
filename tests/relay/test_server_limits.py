"""The relay daemon under the same connection limits as the registry (core ServerConfig).

The real ``assay relay serve`` process on loopback, attacked over raw sockets: the
answer's ``Connection: close`` and the keep-alive timeout must close, a head trickled
a byte at a time must be cut, and idle connections past ``max_connections`` must not
keep an authenticated query from its answer. The mechanism is shared with the registry
(``assay.core.connections``) and attacked in more depth in tests/e2e/test_server_limits.py.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.wire import (
    closed_by_peer,
    connect,
    open_connections,
    response,
    settled,
    trickle_until_closed,
)
from tests.relay.conftest import RelayEnv, build_env
from tests.relay.test_e2e import pytestmark as e2e_marks
from tests.relay.test_e2e import running_relay

pytestmark = e2e_marks

RECORD = "/v1/datasets/civil/entities/household/records/H0000001"


@contextmanager
def relay(tmp_path: Path, **server: Any) -> Iterator[tuple[RelayEnv, int, int]]:
    """A real relay with these ``server:`` keys: (env, port, pid)."""
    env = build_env(tmp_path, people=200)
    env.doc["server"].update(server)
    with running_relay(env, tmp_path / "relay.log") as (url, proc):
        yield env, int(url.rpartition(":")[2]), proc.pid


def query(env: RelayEnv, port: int, extra: str = "") -> bytes:
    headers = "".join(f"{k}: {v}\r\n" for k, v in env.headers("all").items())
    return f"GET {RECORD} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{headers}{extra}\r\n".encode()


def test_relay_closes_after_an_answer_that_says_close(tmp_path: Path) -> None:
    with relay(tmp_path, keep_alive_timeout_seconds=120) as (env, port, _pid), connect(port) as s:
        s.sendall(query(env, port, "Connection: close\r\n"))
        assert response(s)[0] == 200
        assert closed_by_peer(s)


def test_relay_closes_an_idle_keep_alive_connection(tmp_path: Path) -> None:
    with relay(tmp_path, keep_alive_timeout_seconds=1) as (env, port, _pid), connect(port) as s:
        s.sendall(query(env, port))
        status, headers, _body = response(s)
        assert status == 200 and headers.get("connection") != "close"
        assert closed_by_peer(s)


def test_relay_cuts_a_head_trickled_past_the_header_read_timeout(tmp_path: Path) -> None:
    limits = {"keep_alive_timeout_seconds": 120, "header_read_timeout_seconds": 1}
    with relay(tmp_path, **limits) as (env, port, _pid), connect(port) as sock:
        sock.sendall(query(env, port))
        assert response(sock)[0] == 200
        head = b"GET /v1/datasets HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 400
        assert trickle_until_closed(sock, head, pause=0.1, steps=len(head))


def test_idle_connections_cannot_starve_an_authenticated_relay_query(tmp_path: Path) -> None:
    limits = {
        "max_connections": 16,
        "keep_alive_timeout_seconds": 120,
        "header_read_timeout_seconds": 120,
    }
    with relay(tmp_path, **limits) as (env, port, pid):
        held: list[socket.socket] = []
        try:
            for i in range(100):
                sock = connect(port)
                if i % 2:
                    sock.sendall(b"GET /v1/datasets HTTP/1.1\r\nHost: x\r\n")
                held.append(sock)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=15) as c:
                r = c.get(RECORD, headers=env.headers("all") | {"Connection": "close"})
                assert r.status_code == 200, r.text
            assert settled(lambda: open_connections(pid, port)) <= 16
        finally:
            for sock in held:
                sock.close()


@pytest.mark.parametrize("key", ["max_connections", "request_timeout_seconds"])
def test_relay_config_refuses_a_limit_out_of_range(tmp_path: Path, key: str) -> None:
    from assay.core.errors import ConfigError
    from assay.relay.settings import load_config

    env = build_env(tmp_path, people=50)
    env.doc["server"][key] = 0
    env.write()
    with pytest.raises(ConfigError) as info:
        load_config(env.config_path)
    assert f"server.{key}" in str(info.value.detail)
