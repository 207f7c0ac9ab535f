"""The hypercorn settings both daemons share, from the core's ``ServerConfig``.

One place, so the registry and the relay cannot drift on limits, timeouts or headers:
both get the same connection guard (``assay.core.connections``) with the same limits.
Socket activation wins over the configured bind: systemd owns the socket.
"""

from __future__ import annotations

import logging
import resource
import time
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import serve as hypercorn_serve

from assay.core import hypercorn_guard, logsetup
from assay.core.audit.writer import AuditWriter
from assay.core.connlimits import Limits, descriptors_wanted, fit_to_descriptors
from assay.core.schema import ServerConfig
from assay.core.systemd import Notifier, listen_fds

H11_BACKSTOP_BYTES = 1024 * 1024

log = logging.getLogger("assay.serving")


def hypercorn_config(server: ServerConfig, *, unix_socket: Path | None = None) -> HyperConfig:
    fds = listen_fds()
    binds = [f"fd://{fds[0]}"] if fds else [server.bind]
    if unix_socket is not None:
        binds.append(f"unix:{unix_socket}")
    return guarded_config(
        binds,
        max_header_bytes=server.max_header_bytes,
        limits=connection_limits(server),
        shutdown_seconds=server.shutdown_timeout_seconds,
    )


def guarded_config(
    binds: list[str], *, max_header_bytes: int, limits: Limits, shutdown_seconds: float
) -> HyperConfig:
    """hypercorn settings for ``binds`` under a connection guard of its own (``limits``).

    Also the admin listener's (``assay.core.admin``): its own binds, never the socket
    systemd passed for the public API, and its own connection table.
    """
    hc = HyperConfig()
    hc.bind = list(binds)
    # The configured header cap is enforced per request (audited 431) by
    # ``assay.core.asgi.HeaderCap``; h11's bound on *incomplete* data is only a memory
    # backstop above it, because when it fires hypercorn answers a bare, unaudited 400.
    hc.h11_max_incomplete_size = max(max_header_bytes, H11_BACKSTOP_BYTES)
    # The connection guard (``assay.core.hypercorn_guard``) enforces the keep-alive, header
    # read and request timeouts and the connection cap. hypercorn's own idle timer runs from a
    # connection's start to its first complete head, so it is set past the guard's
    # keep-alive plus header read time, never cutting a head the guard still allows.
    hc.keep_alive_timeout = limits.keep_alive + limits.header_read
    hc.graceful_timeout = shutdown_seconds
    hc.include_server_header = False
    hc.include_date_header = True
    hc.accesslog = None
    hc.errorlog = logging.getLogger("assay.hypercorn")
    hc.alpn_protocols = ["http/1.1"]
    hypercorn_guard.install(hc, fitted_limits(limits))
    return hc


def fitted_limits(limits: Limits) -> Limits:
    """The limits, with ``max_connections`` within this process's descriptor limit.

    The soft limit is raised toward the hard one first; if that is still short, the cap
    is lowered and the operator told, because a cap above the descriptor limit never
    binds (``connlimits.fit_to_descriptors``).
    """
    fitted = fit_to_descriptors(limits, descriptor_limit(descriptors_wanted(limits)))
    if fitted != limits:
        log.warning(
            "server.max_connections %d needs %d file descriptors, RLIMIT_NOFILE allows %d: "
            "serving at most %d connections",
            limits.max_connections, descriptors_wanted(limits),
            descriptor_limit(0), fitted.max_connections,
        )  # fmt: skip
    return fitted


def descriptor_limit(wanted: int) -> int:
    """RLIMIT_NOFILE's soft limit, raised to ``wanted`` first where the hard one allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    unlimited = resource.RLIM_INFINITY
    if soft != unlimited and soft < wanted:
        target = wanted if hard == unlimited else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # keep the soft limit we have
    return 1 << 30 if soft == unlimited else soft


def connection_limits(server: ServerConfig) -> Limits:
    return Limits(
        max_connections=server.max_connections,
        keep_alive=server.keep_alive_timeout_seconds,
        header_read=server.header_read_timeout_seconds,
        request=server.request_timeout_seconds,
    )


async def serve(
    app: Any,
    hc: HyperConfig,
    shutdown: trio.Event,
    drained: trio.Event,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """hypercorn until ``shutdown``, then its graceful drain; ``drained`` is set after.

    The daemon waits for ``drained`` before it closes the audit log: requests in flight
    at SIGTERM finish (up to ``shutdown_timeout_seconds``) and still get their records.
    """
    try:
        await hypercorn_serve(app, hc, shutdown_trigger=shutdown.wait, task_status=task_status)
    finally:
        drained.set()


async def stop_after_drain(
    *,
    name: str,
    notifier: Notifier,
    drained: trio.Event,
    writer: AuditWriter,
    grace_seconds: float,
    started: float,
) -> None:
    """The shutdown both daemons share: STOPPING=1, let hypercorn finish the requests in
    flight (bounded), then flush and close the audit log and journal the stop."""
    notifier.stopping()
    with trio.move_on_after(grace_seconds + 5):
        await drained.wait()
        await writer.drain()
    await writer.close()
    logsetup.event(
        "shutdown",
        f"{name} stopped",
        seq=writer.head_seq,
        uptime=round(time.monotonic() - started),
    )
