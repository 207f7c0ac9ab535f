"""``assay relay serve``: the relay as its own process, own socket, own audit writer.

Mirrors the registry daemon: startup fails closed (a missing or mismatched API-key
fingerprint, a weak secret, a table that does not load, a non-loopback bind not allowed);
READY=1 is sent only once every table is loaded, the audit writer runs and hypercorn
serves the socket. Each table is watched by its refresh mode; SIGHUP reloads every table
(the ``manual`` mode's trigger); SIGTERM and SIGINT drain and close the audit log.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Mapping
from functools import partial
from typing import Any, cast

import trio
from hypercorn.config import Config as HyperConfig

from assay import __version__
from assay.core import admin, logsetup, refusals, serving
from assay.core.admin import create_admin_app
from assay.core.asgi import ASGIApp, HeaderCap, RecordBeforeDisconnect
from assay.core.audit.runtime import AuditRuntime, open_audit
from assay.core.errors import PostureRefused
from assay.core.metrics import Metrics
from assay.core.posture import report
from assay.core.posture.assess import announce
from assay.core.posture.gate import PostureGate
from assay.core.serving import hypercorn_config as core_hypercorn_config
from assay.core.systemd import Notifier, watchdog_interval
from assay.relay.admin_routes import reload_routes, snapshot_gauges
from assay.relay.posture import relay_posture
from assay.relay.settings import LoadedConfig, load_secrets
from assay.relay.snapshot import SnapshotStore
from assay.relay.wiring import assemble, tables_check

log = logging.getLogger("assay.relay")


def hypercorn_config(loaded: LoadedConfig) -> HyperConfig:
    server = loaded.config.server
    unix = loaded.path(server.unix_socket) if server.unix_socket else None
    return core_hypercorn_config(server, unix_socket=unix)


def _on_checkpoint(checkpoint: Mapping[str, Any]) -> None:
    logsetup.event(
        "checkpoint",
        f"relay audit checkpoint size={checkpoint.get('size')}",
        seq=checkpoint.get("size"),
        head=checkpoint.get("head_hash"),
        checkpoint=json.dumps(dict(checkpoint), sort_keys=True, separators=(",", ":")),
    )


def _status_line(store: SnapshotStore) -> str:
    status = store.status()
    stale = sum(1 for t in status.values() if t["stale"])
    return f"{len(status)} tables loaded" + (f", {stale} stale" if stale else "")


async def run(
    loaded: LoadedConfig, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    cfg = loaded.config
    notifier = Notifier()
    notifier.status("starting")
    secrets = await trio.to_thread.run_sync(load_secrets, loaded)
    audit: AuditRuntime = await trio.to_thread.run_sync(
        partial(open_audit, cfg.audit, base=loaded.base, on_checkpoint=_on_checkpoint)
    )

    # The posture gate, once the secrets and the audit log have passed their own loaders
    # (whose typed errors name a bad secret first): a startup_fail finding stops the
    # relay before it loads a table or listens (docs/posture.md).
    probe = partial(relay_posture, cfg, base=loaded.base, source=loaded.source, thorough=False)
    posture = PostureGate(await trio.to_thread.run_sync(probe))
    announce(posture)
    try:
        posture.enforce_startup()
    except PostureRefused:
        audit.log.close()  # its files, before the refusal leaves the process
        raise

    def readiness(store: SnapshotStore) -> dict[str, Any]:
        return {
            "tables": tables_check(store),
            "audit": {"ok": audit.writer.healthy, "seq": audit.writer.head_seq},
            "posture": posture.readiness(),
        }

    parts = await trio.to_thread.run_sync(
        partial(assemble, loaded, secrets, audit=audit.writer, readiness=readiness)
    )
    metrics: Metrics | None = None
    if cfg.admin is not None:
        metrics = Metrics("relay")
        admin.watch_audit(metrics, audit.writer)
        metrics.add_gauges(snapshot_gauges(parts.store))
        parts.relay.scan_observer = metrics.observe_scan
    started = time.monotonic()
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(audit.writer.run)
        if parts.has_token_file:
            nursery.start_soon(parts.authenticator.watch)
        for state in parts.store.tables():
            nursery.start_soon(parts.store.watch, state)
        asgi = admin.public_metrics(
            HeaderCap(
                RecordBeforeDisconnect(cast(ASGIApp, parts.app)),
                max_header_bytes=cfg.server.max_header_bytes,
                audit=audit.writer,
                route=parts.audit_route(),
            ),
            metrics,
            parts.app.url_map,
        )
        drained = trio.Event()
        hc = hypercorn_config(loaded)
        refusals.install(hc, audit.writer)
        serve = partial(serving.serve, asgi, hc, shutdown, drained)
        binds: list[str] = await nursery.start(serve)
        admin_binds, admin_drained = await admin.start(
            nursery, cfg.admin, base=loaded.base, audit=audit.writer, metrics=metrics,
            app=lambda m: create_admin_app(
                "relay", authenticator=parts.admin_authenticator, audit=audit.writer,
                metrics=m, routes=reload_routes(parts.store),
                posture=lambda: report(probe())),
            shutdown=shutdown, shutdown_seconds=cfg.server.shutdown_timeout_seconds,
        )  # fmt: skip
        binds += admin_binds
        nursery.start_soon(_signals, shutdown, notifier, parts.store)
        interval = watchdog_interval()
        if interval is not None:
            nursery.start_soon(_watchdog, notifier, interval, audit)
        notifier.ready(_status_line(parts.store))
        logsetup.event(
            "startup",
            f"assay relay {__version__} serving on {', '.join(binds)}",
            state="ready",
            seq=audit.writer.head_seq,
        )
        task_status.started(binds)
        await shutdown.wait()
        await admin.wait_drained(admin_drained, cfg.server.shutdown_timeout_seconds)
        await serving.stop_after_drain(
            name="assay relay",
            notifier=notifier,
            drained=drained,
            writer=audit.writer,
            grace_seconds=cfg.server.shutdown_timeout_seconds,
            started=started,
        )
        nursery.cancel_scope.cancel()
    parts.close()  # the row-budget store: every spend is on disk already, so a crash is safe


async def _signals(shutdown: trio.Event, notifier: Notifier, store: SnapshotStore) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for sig in signals:
            if sig == signal.SIGHUP:
                log.info("SIGHUP: reloading every table")
                await store.reload_all()
                notifier.status(_status_line(store))
                continue
            log.info("shutdown requested")
            notifier.stopping()
            shutdown.set()
            return


async def _watchdog(notifier: Notifier, interval: float, audit: AuditRuntime) -> None:
    """Ping only while the loop runs and the audit log can still be written."""
    while True:
        if await trio.to_thread.run_sync(audit.writable) and audit.writer.healthy:
            notifier.watchdog()
        else:
            log.error("watchdog: audit log not writable; withholding ping")
        await trio.sleep(interval)
