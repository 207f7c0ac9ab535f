"""The raw ASGI edge both daemons share: types, one response helper, the header cap.

Why a header cap here and not in h11: h11 bounds only *incomplete* header data, so a
large header block arriving in one read passes it, and when its bound does fire,
hypercorn answers a bare 400 that never reaches the app or the audit log. Checked here,
per request and outermost, an oversized header block gets a problem document (431
``request.headers_too_large``) and an audit record, on the registry and the relay alike;
h11's bound stays only as a memory backstop above it (``assay.core.serving``).
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import trio

from assay.core import problem
from assay.core.errors import AssayError
from assay.core.web import AuditSink, RequestAudit, base_fields

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def header_bytes(scope: Scope) -> int:
    """The request's header block size as sent: name, value, ': ' and CRLF per field."""
    return sum(len(k) + len(v) + 4 for k, v in scope["headers"])


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
    """Outermost ASGI layer: refuse a request whose headers exceed the cap, audited."""

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
        if scope["type"] == "http" and header_bytes(scope) > self.max_header_bytes:
            await self._refuse(scope, send)
        else:
            await self.app(scope, receive, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        request_id = secrets.token_hex(8)
        path = str(scope.get("path", ""))[:200]
        status, body = problem.from_status(
            431,
            f"request headers exceed {self.max_header_bytes} bytes",
            instance=path,
            request_id=request_id,
        )
        method = str(scope.get("method", ""))
        full = str(scope.get("path", ""))
        route = self.route(method, full) if self.route else f"{method} {path}"
        fields = base_fields(None, RequestAudit(), status, body["code"], route, request_id,
                             [], None)  # fmt: skip
        try:
            await self.audit.append(fields)
        except AssayError as audit_err:
            status, body = problem.from_error(audit_err, instance=path, request_id=request_id)
        await respond(send, status, problem.encode(body), problem.PROBLEM_TYPE, request_id, {})


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
