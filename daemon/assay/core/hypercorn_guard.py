"""hypercorn's connection handler under the daemon's ``ConnectionTable``.

Why a subclass of hypercorn's trio ``TCPServer``: hypercorn has no hook for any of this,
so its worker's connection class is replaced (as ``hypercorn_tcp.MAX_RECV`` is raised
in the registry daemon) by one that admits each connection through the table, wraps its
stream and its app so the guard (``assay.core.connections``) sees every byte and every
wait on the client, offers it to the daemon's hook first (the direct upload path), and
fixes three things in hypercorn 0.18 under quart-trio:

1. Its close and idle-timer restart ran inside the app's ``send``, whose scope quart-trio
   has cancelled by then: ``Connection: close`` and keep-alive were ignored
   (pgjones/hypercorn#330). Those two, bounded, run shielded here.
2. Its task group waited for the idle timer after the client left, holding the socket
   and its slot until the keep-alive timeout. The read loop's end now stops the timer.
3. It switched cleartext connections to h2 on the preface or ``Upgrade: h2c``, around
   the connection cap and the request timeout. The switch is skipped: HTTP/1.1 only.

The table and hook are looked up on the hypercorn config, so two daemons in one
process keep their own.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import h11
import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.events import Closed, Updated
from hypercorn.events import Event as HyperEvent
from hypercorn.trio import run as hypercorn_run
from hypercorn.trio import tcp_server as hypercorn_tcp

from assay.core.connections import ConnectionHook, ConnectionTable, Guard, GuardedStream
from assay.core.connlimits import Limits

_TABLE_ATTR = "assay_connections"
_HOOK_ATTR = "assay_connection_hook"


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
            return await self._receive()
        with self._guard.client_wait():
            message = await self._receive()
        kind = message.get("type")
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
