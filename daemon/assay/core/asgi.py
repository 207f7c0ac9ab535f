"""The raw ASGI edge both daemons share: types, one response helper, the header cap.

Why a header cap here and not in h11: h11 bounds only *incomplete* header data, so a
large header block arriving in one read passes it, and when its bound does fire,
hypercorn answers a bare 400 that never reaches the app or the audit log. Checked here,
per request and outermost, an oversized header block gets a problem document (431
``request.headers_too_large``) and an audit record, on the registry and the relay alike;
h11's bound stays only as a memory backstop above it (``assay.core.serving``).

The same layer refuses every request to switch protocols, for the same reason: neither
daemon serves WebSockets, and a WebSocket handshake that reached Quart as a
``websocket`` scope was answered by hypercorn with a bare 500, a traceback and no record
(Quart's error handler ran outside a request context). Here, before any app, a
handshake is an audited 400 ``request.upgrade_refused``: as an ``http`` scope (the
daemons' HTTP/1.1 protocol never hands one to hypercorn's WebSocket stream,
``assay.core.refusals``) and, should one arrive anyway, as a ``websocket`` scope
answered with the WebSocket denial response. ``lifespan`` passes; any other scope type
is not ours and reaches no app.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

import trio

from assay.core import problem
from assay.core.errors import AssayError, UpgradeRefused
from assay.core.web import AuditSink, RequestAudit, base_fields

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("assay.http")

#: The ASGI extension under which a server takes an HTTP answer to a WebSocket handshake.
WEBSOCKET_DENIAL = "websocket.http.response"
#: How much of a caller's path a refusal's ``instance`` keeps.
MAX_INSTANCE_CHARS = 200


def header_bytes(scope: Scope) -> int:
    """The request's header block size as sent: name, value, ': ' and CRLF per field."""
    return sum(len(k) + len(v) + 4 for k, v in scope["headers"])


def _tokens(value: bytes) -> set[str]:
    return {t.strip().lower() for t in value.decode("latin-1").split(",")}


def asks_websocket(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """The request asks to switch to WebSocket: ``Connection`` lists ``upgrade`` and
    ``Upgrade`` lists ``websocket`` (in any field, any case, among other tokens).

    Broader than hypercorn's own test (a ``GET`` whose one ``Upgrade`` value is exactly
    ``websocket``) on purpose: whatever a server or proxy could read as a handshake is
    refused. An ``Upgrade`` without the ``upgrade`` connection option is ignored, as
    RFC 9110 7.8 has a server do, and the request is served.
    """
    connection: set[str] = set()
    upgrade: set[str] = set()
    for name, value in headers:
        lname = name.lower()
        if lname == b"connection":
            connection |= _tokens(value)
        elif lname == b"upgrade":
            upgrade |= {t.split("/", 1)[0] for t in _tokens(value)}
    return "upgrade" in connection and "websocket" in upgrade


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    request_id: str,
    extra: dict[str, str],
) -> None:
    """A complete response with the security headers every response of ours carries."""
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in problem.SECURITY_HEADERS]
    headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


class HeaderCap:
    """Outermost ASGI layer of both daemons: refuse, audited, a request whose headers
    exceed the cap and any WebSocket handshake; pass ``http`` and ``lifespan`` on."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_header_bytes: int,
        audit: AuditSink,
        route: Callable[[str, str], str] | None = None,
    ) -> None:
        self.app = app
        self.max_header_bytes = max_header_bytes
        self.audit = audit
        #: (method, path) to the audit's ``route``; the relay's never keeps a raw path.
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "http":
            if header_bytes(scope) > self.max_header_bytes:
                await self._refuse(scope, send, self._too_large)
            elif asks_websocket(scope["headers"]):
                await self._refuse(scope, send, _upgrade_refused)
            else:
                await self.app(scope, receive, send)
        elif kind == "lifespan":
            await self.app(scope, receive, send)
        elif kind == "websocket":
            await self._refuse(scope, send, _upgrade_refused)
        else:
            # hypercorn makes no other kind; an unknown one is nothing either daemon
            # serves, so no app sees it (and there is no request to answer or record).
            log.warning("ignored an ASGI scope of type %r", str(kind)[:40])

    def _too_large(self, instance: str, request_id: str) -> tuple[int, dict[str, Any]]:
        return problem.from_status(
            431,
            f"request headers exceed {self.max_header_bytes} bytes",
            instance=instance,
            request_id=request_id,
        )

    async def _refuse(
        self,
        scope: Scope,
        send: Send,
        answer: Callable[[str, str], tuple[int, dict[str, Any]]],
    ) -> None:
        """Record the refusal (one record), then answer it as the scope allows."""
        request_id = secrets.token_hex(8)
        full = str(scope.get("path", ""))
        path = full[:MAX_INSTANCE_CHARS]
        status, body = answer(path, request_id)
        # A WebSocket scope has no method; its handshake is a GET (RFC 6455 4.1).
        method = str(scope.get("method", "GET"))
        route = self.route(method, full) if self.route else f"{method} {path}"
        fields = base_fields(None, RequestAudit(), status, body["code"], route, request_id,
                             [], None)  # fmt: skip
        try:
            await self.audit.append(fields)
        except AssayError as audit_err:
            status, body = problem.from_error(audit_err, instance=path, request_id=request_id)
        encoded = problem.encode(body)
        if scope.get("type") == "websocket":
            await _deny_websocket(scope, send, status, encoded, request_id)
        else:
            await respond(send, status, encoded, problem.PROBLEM_TYPE, request_id, {})


def _upgrade_refused(instance: str, request_id: str) -> tuple[int, dict[str, Any]]:
    err = UpgradeRefused("this server speaks HTTP/1.1 only; WebSocket is not served")
    return problem.from_error(err, instance=instance, request_id=request_id)


async def _deny_websocket(
    scope: Scope, send: Send, status: int, body: bytes, request_id: str
) -> None:
    """Answer a handshake before accepting it: the problem document where the server
    takes an HTTP answer (the ASGI WebSocket denial response), else a close, which the
    server turns into a bare 403. Never ``websocket.accept``."""
    if WEBSOCKET_DENIAL not in (scope.get("extensions") or {}):
        await send({"type": "websocket.close", "code": 1008})
        return
    headers = [
        (b"content-type", problem.PROBLEM_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
        (b"connection", b"close"),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in problem.SECURITY_HEADERS]
    await send({"type": "websocket.http.response.start", "status": status, "headers": headers})
    await send({"type": "websocket.http.response.body", "body": body, "more_body": False})


class RecordBeforeDisconnect:
    """Hold a client's hang-up back from the app until its response has started.

    Why: Quart cancels a request's handler as soon as ``receive()`` says
    ``http.disconnect``, and its record is written in ``after_request``, after the
    handler. A client that sends a request and resets the connection at once got no
    record at all (a sweep or a verify was cut off half done). The response starts only
    after ``after_request`` has written the record, so until then the hang-up waits:
    the handler runs to its end (bounded by the app's own body and response timeouts),
    the record is written, hypercorn drops the answer nobody reads, and only then does
    the app see the disconnect (which still stops a streaming body at once).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = trio.Event()

        async def send_marking(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                started.set()
            await send(message)

        async def receive_held() -> MutableMapping[str, Any]:
            message = await receive()
            if message["type"] == "http.disconnect":
                await started.wait()
            return message

        await self.app(scope, receive_held, send_marking)
