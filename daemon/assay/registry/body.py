"""Where an upload's bytes come from: a ``BodySource`` fills the buffer it is given.

The ingest pump owns page-aligned blocks and asks a source to fill them, instead of
taking whatever chunks a server hands out. That inversion is what keeps copies out of
the hot path: the direct transport (``assay.registry.direct``) reads the socket straight
into the block, and the ASGI source below copies each body message once, into the block,
where before it was coalesced into one buffer and then copied again into the stage.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from assay.core.errors import BadRequest

#: ASGI scope extension under which a transport offers a faster ``BodySource``.
DIRECT_BODY_EXTENSION = "assay.direct_body"

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class BodySource(Protocol):
    async def readinto(self, view: memoryview) -> int:
        """Fill the front of ``view``; return how many bytes, 0 only at the body's end.

        Raises ``BadRequest`` (``request.incomplete``) if the client goes away early.
        """
        ...


class AsgiBody:
    """A ``BodySource`` over ASGI ``http.request`` messages (any ASGI server)."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._pending = memoryview(b"")
        self._done = False

    async def readinto(self, view: memoryview) -> int:
        while not self._pending:
            if self._done:
                return 0
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise BadRequest("client disconnected mid-upload", code="request.incomplete")
            self._pending = memoryview(message.get("body", b""))
            self._done = not message.get("more_body", False)
        n = min(len(view), len(self._pending))
        view[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n


async def fill(source: BodySource, view: memoryview) -> int:
    """Fill ``view`` completely unless the body ends first; return the bytes filled."""
    filled = 0
    while filled < len(view):
        # Released on the way out, even by an exception: a live slice would pin the
        # block's mmap, which must be closable when the upload fails.
        with view[filled:] as rest:
            n = await source.readinto(rest)
        if n == 0:
            break
        filled += n
    return filled
