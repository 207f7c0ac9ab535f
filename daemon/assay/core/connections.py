"""Connection limits for both daemons: the trio adapter around ``assay.core.connlimits``.

Why: hypercorn 0.18's trio server has one timer (keep-alive), which under quart-trio
did not even hold, and no header read timeout, no request timeout and no connection
cap at all. Each admitted connection here has a ``Guard``: its stream (``GuardedStream``)
and its app (``assay.core.hypercorn_guard``) report every byte in and out and every wait
on the client to the connection's clock (``connlimits.Clock``), and a watcher task closes
the socket once the clock's deadline passes. Closing the socket, rather than cancelling,
is what also frees a task blocked in hypercorn's shielded ``send_all`` to a client that
stopped reading; what is stuck elsewhere is cancelled after a grace period.

A ``ConnectionTable`` per daemon admits connections up to ``max_connections`` (TCP and
Unix socket together): past it the connection idle longest is closed to make room, and
only when every connection is inside a request does the newcomer get a fixed 503
(``server.busy``, ``Retry-After``) before any of its bytes are read.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from email.utils import formatdate

import h11
import trio

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
