"""Connection limits for both daemons: the trio adapter around ``assay.core.connlimits``.

Why here and not in hypercorn's settings: hypercorn 0.18's trio server has one timer
(keep-alive), and under quart-trio it does not even hold. The app's cancel scope is
cancelled while the app is still inside hypercorn's ``send``, and that cancellation
lands in the server's own close (``Connection: close`` ignored) and in the restart of
its idle timer (keep-alive ignored), so an answered connection stays open for good
(pgjones/hypercorn#330 is the visible half). There is no header read timeout, no
request timeout and no connection cap at all.

So each accepted connection is wrapped, in hypercorn's own connection handler (a
subclass, installed like ``hypercorn_tcp.MAX_RECV`` is raised): its stream counts bytes
in and out, its app sees when it waits on the client, and a watcher task closes the
socket once the connection's clock (``connlimits.Clock``) passes its deadline. Closing
the socket, rather than cancelling, is what also frees a task blocked in hypercorn's
shielded ``send_all`` to a client that stopped reading. hypercorn's own close and idle
timer restart run shielded from the app's cancellation (and nothing that can wait on
the app does), so both work again.

A ``ConnectionTable`` per daemon admits connections up to ``max_connections``
(TCP and Unix socket together): past it the connection idle longest is closed to
make room, and only when every connection is inside a request does the newcomer get
a fixed 503 (``server.busy``, ``Retry-After``) before any of its bytes are read.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from email.utils import formatdate
from typing import Any

import h11
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.events import Closed, Updated
from hypercorn.events import Event as HyperEvent
from hypercorn.trio import run as hypercorn_run
from hypercorn.trio import tcp_server as hypercorn_tcp

from assay.core import problem
from assay.core.connlimits import Clock, Limits, pick_eviction
from assay.core.errors import ServerBusy

log = logging.getLogger("assay.connections")

#: After its socket is closed, how long a connection's tasks get to finish on their own
#: (the app sees the disconnect and records it) before they are cancelled.
CANCEL_GRACE_SECONDS = 5.0
#: Refusals lingering at once (answer sent, draining what the client already sent so
#: it reads the 503 rather than a reset); past this a refused connection just closes.
MAX_REFUSING = 16
REFUSAL_LINGER_SECONDS = 0.5
_CLOSED_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK})

#: A connection handler a daemon offers each admitted connection before hypercorn:
#: True when it served the connection (the direct upload transport), False to pass.
ConnectionHook = Callable[["GuardedStream", "Guard"], Awaitable[bool]]

_TABLE_ATTR = "assay_connections"
_HOOK_ATTR = "assay_connection_hook"


class Guard:
    """One connection's clock, and the watcher that closes the socket at its deadline."""

    def __init__(self, sock: trio.socket.SocketType, limits: Limits) -> None:
        self.clock = Clock(limits, since=trio.current_time())
        self._sock = sock
        self._rearm = trio.Event()
        #: The deadline the watcher sleeps until; it is woken only for an earlier one.
        self._until = float("inf")
        self.closed_because: str | None = None

    # What the transport sees ---------------------------------------------------------

    def received(self, count: int) -> None:
        self.clock.received(trio.current_time(), count)
        self._wake_if_earlier()

    def sent(self, count: int) -> None:
        self.clock.sent(trio.current_time(), count)  # only ever moves the deadline later

    def head_complete(self) -> None:
        self.clock.head_complete(trio.current_time())
        self._wake_if_earlier()

    def answered(self) -> None:
        self.clock.answered(trio.current_time())
        self._wake_if_earlier()

    def app_finished(self) -> None:
        self.clock.app_finished(trio.current_time())
        self._wake_if_earlier()

    @contextmanager
    def client_wait(self) -> Iterator[None]:
        """Around a wait on the client (a body read, a response write)."""
        self.clock.wait_began(trio.current_time())
        self._wake_if_earlier()
        try:
            yield
        finally:
            self.clock.wait_ended()

    def _wake_if_earlier(self) -> None:
        # A later deadline needs no wake-up: the watcher re-reads the clock when it
        # wakes at the old one. Only an earlier one must interrupt its sleep.
        deadline = self.clock.deadline()
        if deadline is not None and deadline < self._until:
            self._rearm.set()

    # Closing ---------------------------------------------------------------------------

    def close(self, because: str) -> None:
        """Close the socket now, from any task: whoever waits on it wakes with an error."""
        if self.closed_because is None:
            self.closed_because = because
        self._sock.close()
        self._rearm.set()

    async def watch(self, connection: trio.CancelScope) -> None:
        """Sleep until the deadline; close the socket once it passes (or once anyone
        closed it), then give the connection ``CANCEL_GRACE_SECONDS`` to finish (the app
        records the disconnect) before cancelling it: a task can be stuck on something
        other than the socket (hypercorn's app queue, full behind an unread body).
        Cancelled itself: close too, so a task blocked in a shielded write cannot hold
        the daemon's shutdown."""
        try:
            while self.closed_because is None:
                deadline = self.clock.deadline()
                if deadline is not None and trio.current_time() >= deadline:
                    log.debug("closing a connection: %s timeout", self.clock.phase.value)
                    self.close(f"{self.clock.phase.value} timeout")
                    break
                self._until = deadline if deadline is not None else float("inf")
                with trio.move_on_at(self._until):
                    await self._rearm.wait()
                if self._rearm.is_set():
                    self._rearm = trio.Event()
            await trio.sleep(CANCEL_GRACE_SECONDS)
            connection.cancel()
        finally:
            self.close(self.closed_because or "done")


class GuardedStream(trio.abc.HalfCloseableStream):
    """A ``SocketStream`` that tells its guard every byte that moves, and when a write
    waits on the client. ``socket`` is the raw trio socket, as on ``SocketStream``."""

    def __init__(self, inner: trio.SocketStream, guard: Guard) -> None:
        self.inner = inner
        self.socket = inner.socket
        self.guard = guard

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        # trio's SocketStream.send_all, one partial send at a time, so that a write a
        # slow client takes in pieces counts as progress piece by piece.
        if self.socket.did_shutdown_SHUT_WR:
            raise trio.ClosedResourceError("can't send data after sending EOF")
        with self.guard.client_wait(), _stream_errors(), memoryview(data) as view:
            if not view:
                if self.socket.fileno() == -1:
                    raise trio.ClosedResourceError("socket was already closed")
                await trio.lowlevel.checkpoint()
                return
            total = 0
            while total < len(view):
                with view[total:] as remaining:
                    sent = await self.socket.send(remaining)
                total += sent
                self.guard.sent(sent)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        data = await self.inner.receive_some(max_bytes)
        self.guard.received(len(data))
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()


@contextmanager
def _stream_errors() -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno in _CLOSED_ERRNOS:
            raise trio.ClosedResourceError("the connection was closed") from None
        raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc


class ConnectionTable:
    """The connections one daemon serves, capped at ``limits.max_connections``."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._live: dict[Guard, None] = {}  # insertion-ordered
        self._refusing = 0
        self.evicted = 0
        self.refused = 0

    def __len__(self) -> int:
        return len(self._live)

    def admit(self, sock: trio.socket.SocketType) -> Guard | None:
        if len(self._live) >= self.limits.max_connections:
            guards = list(self._live)
            victim = pick_eviction([g.clock for g in guards])
            if victim is None:
                return None
            guards[victim].close("evicted")
            del self._live[guards[victim]]
            self.evicted += 1
        guard = Guard(sock, self.limits)
        self._live[guard] = None
        return guard

    def release(self, guard: Guard) -> None:
        self._live.pop(guard, None)

    async def refuse(self, stream: trio.SocketStream) -> None:
        """The fixed 503 for a connection past the cap, then close (bounded)."""
        self.refused += 1
        if self.refused == 1 or self.refused % 100 == 0:
            log.warning(
                "connection refused: %d connections, every one in a request (refused %d)",
                len(self._live), self.refused,
            )  # fmt: skip
        if self._refusing >= MAX_REFUSING:
            await stream.aclose()
            return
        self._refusing += 1
        try:
            with trio.move_on_after(REFUSAL_LINGER_SECONDS):
                await stream.send_all(busy_response(self.limits.max_connections))
                await stream.send_eof()
                while await stream.receive_some(64 * 1024):
                    pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._refusing -= 1
            await stream.aclose()


def busy_response(max_connections: int) -> bytes:
    """The whole 503 answer, framed by h11, for a connection no slot is left for."""
    err = ServerBusy(f"the server is serving its maximum of {max_connections} connections")
    status, body = problem.from_error(err, instance="", request_id="")
    payload = problem.encode(body)
    headers = [
        ("content-type", problem.PROBLEM_TYPE),
        ("content-length", str(len(payload))),
        ("retry-after", "1"),
        ("connection", "close"),
        ("date", formatdate(usegmt=True)),
        *problem.SECURITY_HEADERS,
    ]
    conn = h11.Connection(h11.SERVER)
    out = conn.send(
        h11.Response(status_code=status, headers=headers, reason=b"Service Unavailable")
    )
    out = (out or b"") + (conn.send(h11.Data(data=payload)) or b"")
    return out + (conn.send(h11.EndOfMessage()) or b"")


class _ClientWaits:
    """The ASGI ``receive`` an app gets: a wait for request-body bytes is a client wait.

    Once the body has ended, ``receive`` only waits for a disconnect (quart-trio keeps
    one such call pending for the whole request): that is not waiting on the client.
    """

    def __init__(self, receive: Callable[[], Awaitable[Any]], guard: Guard) -> None:
        self._receive = receive
        self._guard = guard
        self._body_done = False

    async def __call__(self) -> Any:
        if self._body_done:
            m = await self._receive()
            import sys

            print("DBG late recv", m.get("type"), file=sys.stderr, flush=True)
            return m
        with self._guard.client_wait():
            message = await self._receive()
        kind = message.get("type")
        import sys

        print("DBG recv", kind, file=sys.stderr, flush=True)
        if kind == "http.disconnect" or (kind == "http.request" and not message.get("more_body")):
            self._body_done = True
        return message


class _WatchedApp:
    """hypercorn's app wrapper, with each request's ``receive`` and ``send`` watched.

    The app's last body message ends its part of the request: from then on whatever
    holds the request is transport. That includes hypercorn itself: when the app
    answered without reading the body (a 401 to a chunked upload), the body fills the
    app's queue, and hypercorn's read loop and its handling of that last message both
    wait on the full queue for good, inside this ``send``. The guard's clock runs from
    the last message, and the guard closes and then cancels the connection.
    """

    def __init__(self, app: Any, guard: Guard) -> None:
        self._app = app
        self._guard = guard

    async def __call__(
        self, scope: MutableMapping[str, Any], receive: Any, send: Any, *args: Any
    ) -> None:
        if scope.get("type") != "http":
            await self._app(scope, receive, send, *args)
            return
        guard = self._guard

        async def watched_send(message: MutableMapping[str, Any]) -> None:
            if message.get("type") == "http.response.body" and not message.get("more_body"):
                guard.app_finished()
            await send(message)

        try:
            await self._app(scope, _ClientWaits(receive, guard), watched_send, *args)
        finally:
            guard.app_finished()


async def _no_protocol_switch(_request: h11.Request) -> None:
    """In place of hypercorn's check for ``PRI * HTTP/2.0`` and ``Upgrade: h2c``: the
    daemons speak HTTP/1.1 only (``alpn_protocols``), in cleartext too. Over h2 one
    connection carries up to 100 requests at once and a download can stall on h2 flow
    control, where neither the connection cap nor the request timeout could see it. The
    upgrade is ignored, as RFC 9110 allows; the preface is an HTTP/1.1 request like any."""


class GuardedTCPServer(hypercorn_tcp.TCPServer):
    """hypercorn's connection handler under the daemon's ``ConnectionTable``."""

    _guard: Guard | None = None
    _protocol: Any = None

    @property
    def protocol(self) -> Any:
        return self._protocol

    @protocol.setter
    def protocol(self, wrapper: Any) -> None:
        # hypercorn makes its ProtocolWrapper inside ``run``; its HTTP/1.1 protocol is
        # the one place that would switch the connection to h2.
        inner: Any = getattr(wrapper, "protocol", None)
        if self._guard is not None and hasattr(inner, "_check_protocol"):
            inner._check_protocol = _no_protocol_switch
        self._protocol = wrapper

    async def run(self) -> None:
        table = getattr(self.config, _TABLE_ATTR, None)
        raw = self.stream
        if not isinstance(table, ConnectionTable) or not isinstance(raw, trio.SocketStream):
            await super().run()
            return
        guard = table.admit(raw.socket)
        if guard is None:
            await table.refuse(raw)
            return
        self._guard = guard
        stream = GuardedStream(raw, guard)
        self.stream = stream
        self.app = _WatchedApp(self.app, guard)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(guard.watch, nursery.cancel_scope)
                try:
                    hook = getattr(self.config, _HOOK_ATTR, None)
                    if hook is None or not await hook(stream, guard):
                        await super().run()
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            table.release(guard)
            guard.close(guard.closed_because or "done")

    async def _read_data(self) -> None:
        try:
            await super()._read_data()
        finally:
            # The client has gone (EOF, reset, or the guard closed it): nothing is left
            # to time. hypercorn's idle timer would otherwise keep the connection, its
            # descriptor and its slot until the keep-alive timeout, as its task group
            # waits for the timer before the socket is closed.
            with trio.CancelScope(shield=True):
                await self.idle_task.stop()

    async def protocol_send(self, event: HyperEvent) -> None:
        if isinstance(event, Closed):
            # hypercorn closes the connection here, often from inside the app's send,
            # whose scope quart-trio has already cancelled as the answer completes: the
            # close itself is shielded (it is bounded: EOF and close, no waiting). Telling
            # the protocol is not: it can wait on the app's queue, and must stay
            # cancellable for the guard and for shutdown.
            with trio.CancelScope(shield=True):
                await self._close()
            await self.protocol.handle(Closed())
            return
        if isinstance(event, Updated):
            if self._guard is not None:
                if event.idle:
                    self._guard.answered()
                else:
                    self._guard.head_complete()
            # Restarting or stopping the idle timer: shielded for the same reason, and
            # bounded (a lock held only by other restarts, a task start).
            with trio.CancelScope(shield=True):
                await super().protocol_send(event)
            return
        await super().protocol_send(event)  # data: hypercorn shields the write itself


def install(hc: HyperConfig, limits: Limits) -> ConnectionTable:
    """Serve this config's connections under a new ``ConnectionTable`` of ``limits``.

    hypercorn has no hook for this, so its trio worker's connection class is replaced by
    the subclass above; the table is looked up on the config, so two daemons in one
    process keep their own.
    """
    if not hasattr(hypercorn_run, "TCPServer"):
        # Fail closed: without the guard no connection limit would hold.
        raise RuntimeError("this hypercorn has no trio TCPServer to guard")
    table = ConnectionTable(limits)
    setattr(hc, _TABLE_ATTR, table)
    hypercorn_run.TCPServer = GuardedTCPServer
    return table


def set_hook(hc: HyperConfig, hook: ConnectionHook) -> None:
    """Offer each admitted connection of this config to ``hook`` before hypercorn."""
    setattr(hc, _HOOK_ATTR, hook)
