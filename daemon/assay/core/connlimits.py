"""How long a connection may hold the daemon, and which one to give up at the cap. Pure.

Why a state machine of its own: hypercorn has one timer (keep-alive) and quart-trio
cancels it (an app's scope is cancelled while it is still telling the server to close
the connection), so a connection could stay open forever after its answer, or while
it trickles a head one byte at a time. Each connection here has one clock, driven by
what the transport sees (bytes in and out, a head complete, an answer done) and the
adapter (``assay.core.connections``) closes the connection once the clock's deadline
passes. The phases and their limits:

1. ``IDLE``: no request in progress, no byte of the next one yet. Closed after
   ``keep_alive`` (also before the first request).
2. ``HEAD``: a head has started and not ended. Closed ``header_read`` after its first
   byte; more bytes do not extend it, so a head trickled a byte at a time is cut.
3. ``REQUEST``: from a complete head until the answer is done. While the daemon waits
   on the client (for request-body bytes, or for the client to take response bytes)
   and nothing moves for ``request``, it is closed; every byte that moves restarts
   that wait. Server-side work (hashing, a sweep) is not waiting on the client and is
   never cut, and a 70 GB upload or download that keeps moving is never cut either.
   Once the app has finished, whatever still holds the request (an unread body
   behind an early refusal) is transport only, and the timer runs until it is done.

At the cap, a new connection is admitted by closing the connection that has waited
longest without a request in progress (``IDLE`` or ``HEAD``): connections that hold no
request cannot keep out one that brings a request. Only when every connection is in
a request is the new one refused (a fast 503).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import Enum

#: Descriptors one connection may hold: its socket, and the object it is being served
#: or an upload's temp file (open for writing, and for reading back to inspect it).
FDS_PER_CONNECTION = 3
#: Descriptors kept for everything else: listeners, the audit log, the database, the
#: event loop, worker threads, the refusals being answered.
FD_RESERVE = 64


class Phase(Enum):
    IDLE = "idle"
    HEAD = "head"
    REQUEST = "request"


@dataclass(frozen=True)
class Limits:
    max_connections: int
    keep_alive: float
    header_read: float
    request: float


@dataclass
class Clock:
    """One connection's phase and deadline; every method takes the current time."""

    limits: Limits
    since: float
    phase: Phase = Phase.IDLE
    #: Client waits in progress (a body read, a response write); the request's timer
    #: runs only while there is at least one, or once the app has finished.
    waits: int = 0
    app_done: bool = False

    def received(self, now: float, count: int) -> None:
        if count <= 0:
            return
        if self.phase is Phase.IDLE:
            self._enter(Phase.HEAD, now)
        elif self.phase is Phase.REQUEST:
            self.since = now  # progress

    def sent(self, now: float, count: int) -> None:
        if count > 0 and self.phase is Phase.REQUEST:
            self.since = now

    def head_complete(self, now: float) -> None:
        self._enter(Phase.REQUEST, now)

    def answered(self, now: float) -> None:
        self._enter(Phase.IDLE, now)

    def wait_began(self, now: float) -> None:
        if not self._timing and self.phase is Phase.REQUEST:
            self.since = now
        self.waits += 1

    def app_finished(self, now: float) -> None:
        """The app returned; until the answer is done, only the client can hold it up."""
        if self.phase is Phase.REQUEST:
            if not self._timing:
                self.since = now
            self.app_done = True

    def wait_ended(self) -> None:
        self.waits = max(0, self.waits - 1)

    @property
    def evictable(self) -> bool:
        """No request in progress: closing it loses nobody an answer."""
        return self.phase is not Phase.REQUEST

    def deadline(self) -> float | None:
        if self.phase is Phase.IDLE:
            return self.since + self.limits.keep_alive
        if self.phase is Phase.HEAD:
            return self.since + self.limits.header_read
        return self.since + self.limits.request if self._timing else None

    def expired(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    @property
    def _timing(self) -> bool:
        return self.waits > 0 or self.app_done

    def _enter(self, phase: Phase, now: float) -> None:
        self.phase = phase
        self.since = now
        self.app_done = False


def descriptors_wanted(limits: Limits) -> int:
    return limits.max_connections * FDS_PER_CONNECTION + FD_RESERVE


def fit_to_descriptors(limits: Limits, nofile: int) -> Limits:
    """``limits`` with ``max_connections`` lowered to what ``nofile`` descriptors allow.

    Why: past the descriptor limit ``accept`` fails (EMFILE) before the cap is reached,
    and then no connection can be admitted by displacing an idle one: the cap must bind
    first for idle connections not to starve a request.
    """
    most = max(1, (nofile - FD_RESERVE) // FDS_PER_CONNECTION)
    if limits.max_connections <= most:
        return limits
    return replace(limits, max_connections=most)


def pick_eviction(clocks: Sequence[Clock]) -> int | None:
    """The index of the connection to close to admit one more, or None to refuse it.

    The one that has waited longest without a request: the oldest idle keep-alive or
    the oldest unfinished head (a slow head is older than a fresh idle connection, so
    a trickled head cannot outlast the newcomers it is crowding out).
    """
    best: int | None = None
    for i, clock in enumerate(clocks):
        if clock.evictable and (best is None or clock.since < clocks[best].since):
            best = i
    return best
