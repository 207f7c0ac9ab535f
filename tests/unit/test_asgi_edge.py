"""The outermost ASGI layer (``assay.core.asgi.HeaderCap``) against every scope kind.

hypercorn handed a WebSocket handshake to the app as a ``websocket`` scope, which no
route serves: a bare 500, a traceback and no record. The edge now refuses every
handshake before any app runs, whichever scope it arrives as, with one record; it
passes ``http`` and ``lifespan`` on, and no app ever sees a scope of an unknown kind.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, MutableMapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from assay.core.asgi import HeaderCap, asks_websocket


class Sink:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def append(self, fields: dict[str, Any]) -> Mapping[str, Any]:
        self.records.append(fields)
        return fields


class App:
    def __init__(self) -> None:
        self.scopes: list[str] = []

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        self.scopes.append(scope["type"])


async def run(scope: dict[str, Any]) -> tuple[App, Sink, list[MutableMapping[str, Any]]]:
    app, sink, sent = App(), Sink(), []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    edge = HeaderCap(app, max_header_bytes=16384, audit=sink)
    await edge(scope, receive, send)
    return app, sink, sent


HANDSHAKE = [
    (b"host", b"x"),
    (b"connection", b"Upgrade"),
    (b"upgrade", b"websocket"),
    (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    (b"sec-websocket-version", b"13"),
]


def ws_scope(extensions: dict[str, Any]) -> dict[str, Any]:
    return {"type": "websocket", "path": "/v1/artifacts", "query_string": b"",
            "headers": HANDSHAKE, "extensions": extensions}  # fmt: skip


async def test_websocket_scope_gets_a_problem_denial_and_one_record() -> None:
    app, sink, sent = await run(ws_scope({"websocket.http.response": {}}))
    assert app.scopes == []
    assert [m["type"] for m in sent] == [
        "websocket.http.response.start",
        "websocket.http.response.body",
    ]
    assert sent[0]["status"] == 400
    body = json.loads(sent[1]["body"])
    assert body["code"] == "request.upgrade_refused"
    assert len(sink.records) == 1
    record = sink.records[0]
    assert record["route"] == "GET /v1/artifacts"
    assert record["error_code"] == "request.upgrade_refused"
    assert record["request_id"] == body["request_id"]


async def test_websocket_scope_without_the_denial_extension_is_closed_never_accepted() -> None:
    app, sink, sent = await run(ws_scope({}))
    assert app.scopes == []
    assert [m["type"] for m in sent] == ["websocket.close"]
    assert len(sink.records) == 1


@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
async def test_http_handshake_is_refused_with_a_record_whatever_the_method(method: str) -> None:
    scope = {"type": "http", "method": method, "path": "/healthz", "query_string": b"",
             "headers": HANDSHAKE}  # fmt: skip
    app, sink, sent = await run(scope)
    assert app.scopes == []
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 400
    assert json.loads(sent[1]["body"])["code"] == "request.upgrade_refused"
    assert len(sink.records) == 1


async def test_http_and_lifespan_pass_and_unknown_scope_kinds_reach_no_app() -> None:
    plain = {"type": "http", "method": "GET", "path": "/", "query_string": b"",
             "headers": [(b"host", b"x"), (b"upgrade", b"websocket")]}  # fmt: skip
    for scope, reached in (
        (plain, ["http"]),
        ({"type": "lifespan"}, ["lifespan"]),
        ({"type": "webtransport", "path": "/"}, []),
        ({"type": "http2.push"}, []),
    ):
        app, sink, sent = await run(scope)
        assert app.scopes == reached, scope["type"]
        assert sink.records == [] and sent == []


TOKEN_CASES = st.sampled_from(["websocket", "WebSocket", "WEBSOCKET", "websocket/13"])
OTHER = st.sampled_from(["h2c", "foo", "", "tls/1.0"])


@given(
    upgrade=st.lists(st.one_of(TOKEN_CASES, OTHER), min_size=1, max_size=4),
    connection=st.lists(
        st.sampled_from(["Upgrade", "upgrade", "keep-alive", "close"]), min_size=1, max_size=3
    ),
    split=st.booleans(),
)
def test_any_spelling_of_a_websocket_handshake_is_seen(
    upgrade: list[str], connection: list[str], split: bool
) -> None:
    """Whatever hypercorn (an exact ``websocket`` with ``upgrade`` among the connection
    tokens) or any other reader would take as a handshake, the edge takes as one too:
    any case, among other tokens, a version suffix, spread over repeated fields."""
    if split:
        headers = [(b"upgrade", u.encode()) for u in upgrade]
        headers += [(b"connection", c.encode()) for c in connection]
    else:
        headers = [(b"upgrade", ", ".join(upgrade).encode()),
                   (b"connection", ", ".join(connection).encode())]  # fmt: skip
    wants = any(u.split("/")[0].lower() == "websocket" for u in upgrade) and any(
        c.lower() == "upgrade" for c in connection
    )
    assert asks_websocket(headers) is wants
