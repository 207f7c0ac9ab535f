"""The direct upload transport: ``POST /v1/artifacts`` bodies read straight off the socket.

Why: over hypercorn each body byte is copied four times in user space (h11's receive
buffer, its extraction, hypercorn's ``bytes()``, the ASGI message into our block) before
it is hashed. For a multi-GiB upload those copies cost more CPU than SHA-256 itself.
Here the socket is read with ``recv_into`` into the page-aligned block that is then
hashed in place and written ``O_DIRECT``: no copy in user space at all.

How, without a second HTTP stack: a connection's first bytes are *peeked*
(``MSG_PEEK``), never consumed, and fed to an ``h11.Connection``. Unless h11 finds a
complete, valid request head there for ``POST /v1/artifacts`` with a ``Content-Length``
and no ``Transfer-Encoding``, the connection goes to hypercorn untouched, so every
other request, and any upload this path does not take, is served exactly as before.
h11 also decides where the head ends: exactly the bytes it consumed (the peek minus
what it left unparsed) are read off the socket, never a separate search for a blank
line, which a bare-LF head would defeat. h11 then frames the response; the same
``UploadAdapter`` (auth, scope, limits, audit, receipts) handles the request, with the
socket offered to it as a ``BodySource`` through an ASGI scope extension. The
connection closes after the response (``Connection: close``): the next upload starts
on a fresh connection, where this path can take it again. The connection's guard
(``assay.core.connections``) bounds the peek's wait and every body read and write.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote

import h11
import trio
from hypercorn.config import Config as HyperConfig

from assay.core import hypercorn_guard
from assay.core.asgi import ASGIApp
from assay.core.connections import Guard, GuardedStream
from assay.core.errors import BadRequest
from assay.registry.body import DIRECT_BODY_EXTENSION

log = logging.getLogger("assay.direct")

UPLOAD_METHOD = b"POST"
UPLOAD_PATH = b"/v1/artifacts"
#: A cheap first filter only; what is taken is decided by h11's parse of the head.
UPLOAD_PREFIX = UPLOAD_METHOD + b" " + UPLOAD_PATH
#: The most of a connection's first bytes that are peeked for a request head.
PEEK_BYTES = 64 * 1024
#: After an early refusal, how long unread body bytes are drained before closing, so
#: the client reads the response instead of a connection reset.
LINGER_SECONDS = 2.0
LINGER_READ_BYTES = 256 * 1024


class SocketBody:
    """A ``BodySource`` reading exactly ``length`` bytes from the socket, in place."""

    def __init__(
        self,
        sock: trio.socket.SocketType,
        length: int,
        *,
        guard: Guard,
        read_timeout: float,
        on_first_read: Callable[[], Awaitable[None]],
    ) -> None:
        self._sock = sock
        self._guard = guard
        self.remaining = length
        self._timeout = read_timeout
        self._on_first_read: Callable[[], Awaitable[None]] | None = on_first_read

    async def readinto(self, view: memoryview) -> int:
        if self.remaining == 0 or not len(view):
            return 0
        if self._on_first_read is not None:
            first, self._on_first_read = self._on_first_read, None
            await first()
        want = min(len(view), self.remaining)
        try:
            with trio.fail_after(self._timeout), self._guard.client_wait():
                n: int = await self._sock.recv_into(view, want)
        except trio.TooSlowError:
            raise BadRequest(
                f"no body bytes for {self._timeout:g} s", code="request.incomplete"
            ) from None
        except (OSError, trio.ClosedResourceError) as exc:
            raise BadRequest(
                f"client connection failed: {exc}", code="request.incomplete"
            ) from None
        if n == 0:
            raise BadRequest("client disconnected mid-upload", code="request.incomplete")
        self._guard.received(n)
        self.remaining -= n
        return n


class DirectUpload:
    """Decides per connection whether to take it; serves the upload when it does."""

    def __init__(self, app: ASGIApp, *, read_timeout: float) -> None:
        self.app = app
        self.read_timeout = read_timeout

    async def try_serve(self, stream: GuardedStream, guard: Guard) -> bool:
        """Serve the connection if it is a direct upload; False leaves it untouched."""
        sock = stream.socket
        try:
            # Waits for the first bytes only; the guard closes a silent connection.
            peeked: bytes = await sock.recv(PEEK_BYTES, socket.MSG_PEEK)
        except (OSError, trio.ClosedResourceError):
            await stream.aclose()
            return True  # closed while silent (the guard's keep-alive), or reset
        guard.received(len(peeked))
        taken = _parse_head(peeked)
        if taken is None:
            return False
        conn, request, head_length = taken
        guard.head_complete()
        try:
            await _consume(sock, head_length)
            await self._serve(stream, guard, conn, request)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away; the adapter has audited whatever it handled
        finally:
            await stream.aclose()
        return True

    async def _serve(
        self, stream: GuardedStream, guard: Guard, conn: h11.Connection, request: h11.Request
    ) -> None:
        exchange = _Exchange(stream, conn)
        body = SocketBody(
            stream.socket,
            int(_header(request, b"content-length") or b"0"),
            guard=guard,
            read_timeout=self.read_timeout,
            on_first_read=exchange.continue_if_expected,
        )
        exchange.body = body
        try:
            await self.app(_scope(stream.socket, request, body), exchange.receive, exchange.send)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            # The client went away (a Ctrl-C mid `assay add`): an ordinary abort, already
            # audited by the adapter with the reason the body read gave; one line, no
            # traceback, and nothing left to answer on a closed connection.
            log.info("direct upload: client closed the connection (%s)", exc)
            return
        except Exception:
            # The adapter turns every typed error into an audited problem; anything
            # else is a bug, answered as hypercorn answers one: a bare 500.
            log.exception("direct upload failed")
            if not exchange.started:
                await exchange.send({"type": "http.response.start", "status": 500,
                                     "headers": [(b"content-length", b"0")]})  # fmt: skip
                await exchange.send({"type": "http.response.body", "body": b""})
            return
        if body.remaining:
            await _linger(stream, body.remaining)


class _Exchange:
    """ASGI ``receive``/``send`` for one request, framed by h11 on the raw stream."""

    def __init__(self, stream: GuardedStream, conn: h11.Connection) -> None:
        self.stream = stream
        self.conn = conn
        self.body: SocketBody | None = None
        self.started = False

    async def continue_if_expected(self) -> None:
        """``Expect: 100-continue`` is answered only once the body is wanted, as
        hypercorn does: a refused request never invites the client to send it."""
        if self.conn.they_are_waiting_for_100_continue:
            await self._write(h11.InformationalResponse(status_code=100, headers=[]))

    async def receive(self) -> MutableMapping[str, Any]:
        """Plain ASGI body messages, for an app that does not use the direct source."""
        assert self.body is not None
        buf = bytearray(min(self.body.remaining, 1024 * 1024))
        n = await self.body.readinto(memoryview(buf)) if buf else 0
        more = self.body.remaining > 0
        return {"type": "http.request", "body": bytes(buf[:n]), "more_body": more}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            status = int(message["status"])
            headers = [
                *message.get("headers", []),
                (b"date", formatdate(usegmt=True).encode()),  # as hypercorn adds it
                (b"connection", b"close"),
            ]
            reason = HTTPStatus(status).phrase.encode()
            await self._write(h11.Response(status_code=status, headers=headers, reason=reason))
        elif message["type"] == "http.response.body":
            await self._write(h11.Data(data=message.get("body", b"")))
            if not message.get("more_body", False):
                await self._write(h11.EndOfMessage())

    async def _write(self, event: h11.Event) -> None:
        data = self.conn.send(event)
        if data:
            await self.stream.send_all(data)


def _scope(
    sock: trio.socket.SocketType, request: h11.Request, body: SocketBody
) -> MutableMapping[str, Any]:
    """The ASGI scope hypercorn would build, plus the direct body source."""
    target, _, query = request.target.partition(b"?")
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": request.http_version.decode(),
        "method": request.method.decode(),
        "scheme": "http",
        "path": unquote(target.decode("ascii")),
        "raw_path": target,
        "query_string": query,
        "root_path": "",
        "headers": list(request.headers),
        "client": _addr(sock, peer=True),
        "server": _addr(sock, peer=False),
        "extensions": {DIRECT_BODY_EXTENSION: body},
    }


def _parse_head(peeked: bytes) -> tuple[h11.Connection, h11.Request, int] | None:
    """h11's reading of the peeked bytes, if they hold a whole upload head it accepts:
    the connection, the request and the head's length as h11 counted it.

    The length is what h11 consumed: the peek minus the bytes it left unparsed
    (``trailing_data``). h11 ends a head at the first blank line, bare LF or CRLF, so
    this is where hypercorn would end it too.
    """
    after = peeked[len(UPLOAD_PREFIX) : len(UPLOAD_PREFIX) + 1]
    if not peeked.startswith(UPLOAD_PREFIX) or after not in (b" ", b"?"):
        return None
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=PEEK_BYTES)
    conn.receive_data(peeked)
    try:
        event = conn.next_event()
    except h11.RemoteProtocolError:
        return None  # hypercorn answers malformed requests, as for any route
    if not isinstance(event, h11.Request) or not _direct_framing(event):
        return None  # NEED_DATA (a head split across segments) included: hypercorn's
    if event.method != UPLOAD_METHOD or event.target.partition(b"?")[0] != UPLOAD_PATH:
        return None
    unparsed, _closed = conn.trailing_data
    return conn, event, len(peeked) - len(unparsed)


def _direct_framing(request: h11.Request) -> bool:
    """Only a plain Content-Length body is read directly; chunked goes to hypercorn."""
    return (
        _header(request, b"content-length") is not None
        and _header(request, b"transfer-encoding") is None
    )


def _header(request: h11.Request, name: bytes) -> bytes | None:
    for key, value in request.headers:
        if key == name:
            return bytes(value)
    return None


def _addr(sock: trio.socket.SocketType, *, peer: bool) -> tuple[str, int] | None:
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        address = sock.getpeername() if peer else sock.getsockname()
    except OSError:
        # ENOTCONN: the client already reset the connection. The request is still served
        # (and audited: its body read fails as a client abort), with no address.
        return None
    return (str(address[0]), int(address[1]))


async def _consume(sock: trio.socket.SocketType, count: int) -> None:
    """Read past the peeked head (already queued, so this never waits for the client)."""
    while count:
        data = await sock.recv(count)
        if not data:
            raise trio.BrokenResourceError("connection closed while reading the request head")
        count -= len(data)


async def _linger(stream: GuardedStream, remaining: int) -> None:
    """Drain a refused request's unread body for a short while, then let it close."""
    with trio.move_on_after(LINGER_SECONDS):
        while remaining > 0:
            data = await stream.receive_some(min(remaining, LINGER_READ_BYTES))
            if not data:
                return
            remaining -= len(data)


def install(hc: HyperConfig, direct: DirectUpload) -> None:
    """Offer this config's admitted connections to ``direct`` before hypercorn."""
    hypercorn_guard.set_hook(hc, direct.try_serve)
