"""A download's open file has one owner, released on every path.

Why: the content route opens the object in its handler (so a missing or unservable
object becomes a problem answer before any byte is committed) and streams it from the
response body. If that body never runs, because the edge answers something else
instead (the request's audit record could not be written) or the request is cancelled
before the body is iterated, a generator's ``finally`` never runs and the descriptor
leaks: an ``artifacts:read`` token could drive the daemon to EMFILE. So the descriptor
is held by an ``OpenObject`` that closes at most once, from whichever comes first: the
body's end, or the end of the ASGI call that carried the request (``ReleaseAtEnd``),
which returns only once the body is done with, however the request went.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from assay.core.asgi import ASGIApp, Receive, Scope, Send

#: Where ``ReleaseAtEnd`` keeps a request's owned objects in its ASGI scope.
OWNED_KEY = "assay.owned"


class OpenObject:
    """An open descriptor on a stored object, closed at most once."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @property
    def fd(self) -> int:
        if self._fd < 0:
            raise ValueError("the object is closed")
        return self._fd

    def close(self) -> None:
        # Never twice: a second os.close could close a descriptor the number was reused for.
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def own(scope: Mapping[str, object], obj: OpenObject) -> None:
    """Tie ``obj`` to the request: closed when its ASGI call ends, if not before."""
    owned = scope.get(OWNED_KEY)
    if isinstance(owned, list):
        owned.append(obj)


class ReleaseAtEnd:
    """ASGI wrapper: whatever a request's handler owned is closed when the call returns."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        owned: list[OpenObject] = []
        scope[OWNED_KEY] = owned
        try:
            await self.app(scope, receive, send)
        finally:
            for obj in owned:
                obj.close()
