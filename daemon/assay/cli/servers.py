"""Running a daemon in the foreground for ``serve`` and ``relay serve``.

Why here: choosing the address on the command line (``--bind``) and turning a failed
bind into ``server.bind_failed`` are the command line's business. A bind that fails
inside hypercorn arrives wrapped in trio's nested ``ExceptionGroup``s; it is found
there and raised as one typed error, so ``main()`` prints one line and exits 2.
"""

from __future__ import annotations

import dataclasses
import errno
from collections.abc import Awaitable, Callable
from typing import Any

from assay.cli.errors import ServerBindFailed

#: errno values a failed ``bind()`` or ``listen()`` gives: in use, not an address of
#: this host, not permitted (a port below 1024); and for ``fd://N``, a descriptor that is
#: not open, not a socket, or a socket that cannot listen (a datagram one).
BIND_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES, errno.EPERM,
                         errno.EBADF, errno.ENOTSOCK, errno.EOPNOTSUPP, errno.EINVAL})  # fmt: skip
#: Functions on the path from hypercorn's serve to ``socket.bind``.
_BIND_FRAMES = frozenset({"create_sockets", "_create_sockets", "bind", "listen"})


def with_bind(loaded: Any, bind: str | None) -> Any:
    """``loaded`` with ``server.bind`` replaced, validated by the config's own rules (so
    a non-loopback ``--bind`` still needs ``server.allow_non_loopback: true``)."""
    if bind is None:
        return loaded
    from assay.core.schema import validate

    config = loaded.config
    server = validate(type(config.server), {**config.server.model_dump(), "bind": bind},
                      source="--bind")  # fmt: skip
    return dataclasses.replace(loaded, config=config.model_copy(update={"server": server}))


def _leaves(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    pending = [exc]
    for _ in range(10_000):  # bounded: groups nest a few levels deep
        if not pending:
            break
        e = pending.pop()
        if isinstance(e, BaseExceptionGroup):
            pending.extend(reversed(e.exceptions))
        else:
            out.append(e)
    return out


def _from_bind(exc: OSError) -> bool:
    if exc.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
        return True
    tb = exc.__traceback__
    frames: set[str] = set()
    for _ in range(1000):
        if tb is None:
            break
        frames.add(tb.tb_frame.f_code.co_name)
        tb = tb.tb_next
    return exc.errno in BIND_ERRNOS and bool(frames & _BIND_FRAMES)


def bind_error(exc: BaseException) -> str | None:
    """Why the bind failed, if ``exc`` (a group or not) holds a failed bind: an
    ``OSError`` from the bind path, or hypercorn's ``SocketTypeError`` for an ``fd://N``
    that is a socket of the wrong type (a datagram one)."""
    from hypercorn.config import SocketTypeError  # loaded already: the server ran

    for leaf in _leaves(exc):
        if isinstance(leaf, OSError) and _from_bind(leaf):
            return leaf.strerror or str(leaf)
        if isinstance(leaf, SocketTypeError):
            return "not a stream socket"
    return None


def run_server(run: Callable[[Any], Awaitable[None]], loaded: Any) -> int:
    """``trio.run(run, loaded)``; a failed bind becomes ``server.bind_failed``."""
    import trio

    server = loaded.config.server
    where = server.bind + (f" and unix:{server.unix_socket}" if server.unix_socket else "")
    try:
        trio.run(run, loaded)
    except BaseException as exc:
        reason = bind_error(exc)
        if reason is None:
            raise
        raise ServerBindFailed(
            f"cannot listen on {where}: {reason} (choose another address with --bind "
            "or server.bind)"
        ) from None
    return 0
