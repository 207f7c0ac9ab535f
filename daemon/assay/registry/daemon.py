"""``assay serve``: wire config, secrets, store, audit and HTTP together under trio.

Startup fails closed (weak or missing secret, unreadable token file, torn audit log,
non-loopback bind not allowed). READY=1 is sent only once hypercorn is serving the
socket and the store and audit log are open; the watchdog is pinged only while the loop
answers and the store and audit log are writable. SIGTERM drains and checkpoints.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, cast

import trio
from hypercorn.config import Config as HyperConfig
from hypercorn.trio import tcp_server as hypercorn_tcp

from assay import __version__
from assay.core import admin, logsetup, refusals, serving
from assay.core.admin import create_admin_app
from assay.core.asgi import ASGIApp, HeaderCap, RecordBeforeDisconnect
from assay.core.audit.runtime import AuditRuntime, open_audit
from assay.core.authn import Authenticator
from assay.core.errors import AssayError, PostureRefused
from assay.core.metrics import Metrics
from assay.core.posture import report
from assay.core.posture.assess import announce
from assay.core.posture.gate import PostureGate
from assay.core.secrets import resolve_path
from assay.core.serving import hypercorn_config as core_hypercorn_config
from assay.core.systemd import CONSUMER_FD_NAME, Notifier, watchdog_interval
from assay.registry import consumer_socket
from assay.registry import direct as direct_upload
from assay.registry.app import create_app
from assay.registry.config import LoadedConfig, RegistryConfig, load_config
from assay.registry.consumer_gate import ConsumerGate
from assay.registry.consumer_socket import Listener, group_ids, open_listener
from assay.registry.consumers import rules
from assay.registry.db import RegistryDB
from assay.registry.health import Probe
from assay.registry.metrics import registry_gauges
from assay.registry.posture import registry_posture
from assay.registry.reconcile import reconcile
from assay.registry.service import Registry
from assay.registry.store import ObjectStore
from assay.registry.upload import UploadAdapter
from assay.trust.publisher import TrustPublisher
from assay.trust.setup import load_repository

log = logging.getLogger("assay.daemon")

FAULT_ENV = "ASSAY_TEST_FAULTS"


#: hypercorn reads sockets 64 KiB at a time (a module constant, not a config setting);
#: uploads pay Python overhead per read, so larger reads cut the daemon's CPU per GiB.
RECV_BYTES = 1024 * 1024


def hypercorn_config(loaded: LoadedConfig) -> HyperConfig:
    server = loaded.config.server
    hypercorn_tcp.MAX_RECV = RECV_BYTES
    unix = loaded.path(server.unix_socket) if server.unix_socket else None
    return core_hypercorn_config(server, unix_socket=unix)


def _events(kind: str, fields: dict[str, Any], *, stacklevel: int = 1) -> None:
    """Journal one registry event, attributed ``stacklevel`` frames up (1: the caller)."""
    priority = logging.ERROR if kind == "integrity_failed" else logging.INFO
    message = f"{kind} {fields.get('digest', '')}".strip()
    logsetup.event(kind, message, priority=priority, stacklevel=stacklevel + 1, **fields)


async def run(
    loaded: LoadedConfig, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
) -> None:
    cfg = loaded.config
    notifier = Notifier()
    notifier.status("starting")
    authenticator = Authenticator(_token_path(loaded))
    await trio.to_thread.run_sync(authenticator.load)

    audit: AuditRuntime = await trio.to_thread.run_sync(
        partial(open_audit, cfg.audit, base=loaded.base, on_checkpoint=_on_checkpoint)
    )

    def events(kind: str, fields: dict[str, Any]) -> None:
        """Journal each state change, and keep systemd's STATUS= counts current. The
        journal names the registry code that made the change (this closure's caller)."""
        _events(kind, fields, stacklevel=2)
        notifier.status(_status_line(registry.counts(), registry.last_sweep))

    # The posture gate, once the secrets and the audit log have passed their own loaders
    # (whose typed errors name a bad secret first): a startup_fail finding stops the
    # daemon before the store opens or anything listens (docs/posture.md).
    posture_probe = partial(
        registry_posture, cfg, base=loaded.base, source=loaded.source, thorough=False
    )
    posture = PostureGate(await trio.to_thread.run_sync(posture_probe))
    announce(posture)
    try:
        posture.enforce_startup()
    except PostureRefused:
        audit.log.close()  # its files, before the refusal leaves the process
        raise
    publisher: TrustPublisher | None = None
    if cfg.trust is not None and cfg.trust.enabled:
        repo = await trio.to_thread.run_sync(partial(load_repository, cfg.trust, base=loaded.base))
        publisher = TrustPublisher(repo, lambda: registry.artifacts.values())

    registry = Registry(
        store=ObjectStore(loaded.path(cfg.registry.store_dir)),
        db=RegistryDB(loaded.path(cfg.registry.db_path)),
        policy=loaded.policy,
        audit_append=audit.writer.append,
        max_artifact_bytes=cfg.registry.max_artifact_bytes,
        block_bytes=cfg.registry.upload_buffer_bytes,
        events=events,
        approver_standing=authenticator.standing,
        audit_head=lambda: audit.writer.head_seq,
        audit_uncertain=lambda: audit.log.poisoned is not None,
        audit_position=audit.head_position,
        on_trusted_change=publisher.on_trusted_change if publisher else None,
    )
    registry.rehash_max_bytes = cfg.consumer.rehash_max_bytes
    await trio.to_thread.run_sync(registry.open_blocking)
    started = time.monotonic()
    # The consumer socket's principals (group names resolved now: an unknown one stops
    # startup before anything listens), then the socket itself. If a later step of
    # startup fails, the process exits and the next start replaces the dead socket.
    peer_rules = rules(cfg.consumer, await trio.to_thread.run_sync(group_ids, cfg.consumer))
    consumers = await trio.to_thread.run_sync(_consumer_listener, loaded)

    interval = watchdog_interval()
    probe = Probe(
        registry,
        audit_writable=audit.writable,
        audit_healthy=lambda: audit.writer.healthy,
        interval=min(2.0, interval / 2) if interval else 2.0,
        extra=partial(_on_disk_checks, loaded),
    )

    def readiness() -> dict[str, Any]:
        """The probe's latest checks; the audit writer's own health is read live."""
        checks = probe.checks()
        audit_check = dict(checks.get("audit", {"ok": False}))
        audit_check["ok"] = bool(audit_check.get("ok")) and audit.writer.healthy
        audit_check["seq"] = audit.writer.head_seq
        checks["audit"] = audit_check
        if publisher is not None:
            checks["trust"] = publisher.readiness()
        checks["posture"] = posture.readiness()
        return checks

    app = create_app(
        registry,
        authenticator=authenticator,
        audit=audit.writer,
        max_json_body_bytes=cfg.server.max_json_body_bytes,
        readiness=readiness,
        receipt_hook=audit.receipt_headers,
        audit_records=audit.records_after,
        max_name_chars=cfg.registry.max_name_chars,
        max_metadata_entries=cfg.registry.max_metadata_entries,
    )
    upload = UploadAdapter(
        RecordBeforeDisconnect(cast(ASGIApp, app)),
        registry=registry,
        authenticator=authenticator,
        audit=audit.writer,
        max_name_chars=cfg.registry.max_name_chars,
        max_metadata_entries=cfg.registry.max_metadata_entries,
        response_hook=audit.receipt_headers_for_upload,
    )
    metrics: Metrics | None = None
    if cfg.admin is not None:
        metrics = Metrics("registry")
        admin.watch_audit(metrics, audit.writer)
        metrics.add_gauges(registry_gauges(registry))
    asgi = admin.public_metrics(
        HeaderCap(upload, max_header_bytes=cfg.server.max_header_bytes, audit=audit.writer),
        metrics,
        app.url_map,
    )
    shutdown = trio.Event()
    hc = hypercorn_config(loaded)
    refusals.install(hc, audit.writer)
    if cfg.registry.direct_upload:
        direct_upload.install(
            hc,
            direct_upload.DirectUpload(
                asgi, read_timeout=cfg.registry.upload_stall_timeout_seconds
            ),
        )

    async with trio.open_nursery() as nursery:
        await nursery.start(audit.writer.run)
        replay = await reconcile(registry, audit.records_after,
                                 progress=_replay_progress(notifier))  # fmt: skip
        nursery.start_soon(_mark_keeper, registry)
        if publisher is not None:
            # After replay: the first publish carries the set as replay left it.
            await nursery.start(publisher.run)
        await nursery.start(probe.run)
        nursery.start_soon(authenticator.watch)
        drained = trio.Event()
        binds: list[str] = await nursery.start(serving.serve, asgi, hc, shutdown, drained)
        admin_binds, admin_drained = await admin.start(
            nursery, cfg.admin, base=loaded.base, audit=audit.writer, metrics=metrics,
            app=lambda m: create_admin_app(
                "registry", authenticator=authenticator, audit=audit.writer,
                metrics=m,
                posture=lambda: report(posture_probe())),
            shutdown=shutdown, shutdown_seconds=cfg.server.shutdown_timeout_seconds,
        )  # fmt: skip
        binds += admin_binds
        consumers_done = trio.Event()
        if consumers is not None:
            gate = ConsumerGate(registry, authenticator=authenticator, audit=audit.writer,
                                rules=peer_rules)  # fmt: skip
            await nursery.start(_serve_consumers, consumers, gate, cfg, shutdown, consumers_done)
            binds.append(f"consumer socket {consumers.path or 'fd ' + CONSUMER_FD_NAME}")
        else:
            consumers_done.set()
        nursery.start_soon(_signals, shutdown, notifier)
        if cfg.registry.sweep_interval_seconds > 0:
            nursery.start_soon(_sweeper, registry, cfg.registry.sweep_interval_seconds, notifier)
        if interval is not None:
            nursery.start_soon(_watchdog, notifier, interval, probe)
        if os.environ.get(FAULT_ENV) and cfg.watchdog.allow_fault_injection:
            nursery.start_soon(_fault_switch, loaded)
        counts = registry.counts()
        notifier.ready(_status_line(counts, registry.last_sweep))
        logsetup.event(
            "startup",
            f"assay {__version__} serving on {', '.join(binds)}; replay read "
            f"{replay.scanned} records ({replay.mutations} mutations, {replay.applied} applied)",
            state="ready",
            seq=audit.writer.head_seq,
            replay_scanned=replay.scanned,
            replay_applied=replay.applied,
        )
        task_status.started(binds)
        await shutdown.wait()
        # Consumer handoffs in flight finish (and leave their records) before the audit
        # log closes; each is bounded by its timeout and its handoff.
        with trio.move_on_after(cfg.server.shutdown_timeout_seconds):
            await consumers_done.wait()
        await admin.wait_drained(admin_drained, cfg.server.shutdown_timeout_seconds)
        await serving.stop_after_drain(
            name="assay",
            notifier=notifier,
            drained=drained,
            writer=audit.writer,
            grace_seconds=cfg.server.shutdown_timeout_seconds,
            started=started,
        )
        # Drained: nothing is in flight, so the mark reaches the head and the next
        # start reads no record at all.
        await registry.save_replay_mark()
        nursery.cancel_scope.cancel()
    registry.db.close()


def _consumer_listener(loaded: LoadedConfig) -> Listener | None:
    """The consumer socket: systemd's fd named ``consumer``, else ``consumer.socket``
    (relative to the config's directory), else none. Blocking."""
    section = loaded.config.consumer
    path = loaded.path(section.socket) if section.socket else None
    return open_listener(section, path)


async def _serve_consumers(
    listener: Listener,
    gate: ConsumerGate,
    cfg: RegistryConfig,
    shutdown: trio.Event,
    done: trio.Event,
    *,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The consumer socket until shutdown; its file is removed when the daemon made it."""
    try:
        await consumer_socket.serve(
            listener, gate, max_connections=cfg.consumer.max_connections,
            request_seconds=cfg.consumer.request_timeout_seconds, shutdown=shutdown,
            task_status=task_status,
        )  # fmt: skip
    finally:
        listener.close()
        done.set()


def _on_disk_checks(loaded: LoadedConfig) -> dict[str, dict[str, Any]]:
    """Would this daemon start again? The config file on disk still loads strictly, and
    with it the active policy (which says if it changed since startup: the daemon keeps
    enforcing the one it started with until restarted). One load serves both checks."""
    try:
        on_disk = load_config(loaded.source)
    except (AssayError, OSError) as exc:
        failed = {"ok": False, "error": str(exc)[:500]}
        return {"config": failed, "policy": dict(failed)}
    return {
        "config": {"ok": True, "source": str(loaded.source)},
        "policy": {
            "ok": True,
            "name": loaded.policy.name,
            "changed_on_disk": on_disk.policy != loaded.policy,
        },
    }


def _token_path(loaded: LoadedConfig) -> Any:
    path = resolve_path(loaded.config.auth.token_file, base=loaded.base)
    if path is None:
        from assay.core.errors import SecretError

        raise SecretError("auth.token_file must be a file or a credential, not an env variable")
    return path


def _on_checkpoint(checkpoint: Mapping[str, Any]) -> None:
    logsetup.event(
        "checkpoint",
        f"audit checkpoint size={checkpoint.get('size')}",
        seq=checkpoint.get("size"),
        head=checkpoint.get("head_hash"),
        checkpoint=json.dumps(dict(checkpoint), sort_keys=True, separators=(",", ":")),
    )


def _status_line(counts: dict[str, int], sweep: dict[str, Any] | None) -> str:
    text = (
        f"{counts['trusted']} trusted, {counts['quarantined']} quarantined, "
        f"{counts['revoked']} revoked, {counts['deleted']} deleted"
    )
    if sweep:
        failed = len(sweep["failed"])
        text += f"; last sweep {sweep['finished']}: {sweep['checked']} checked, {failed} failed"
    return text


#: How often the replay mark is saved while serving: a crash restart reads at most about
#: this much traffic's records (plus any mutation still in flight).
MARK_EVERY_SECONDS = 1.0


async def _mark_keeper(registry: Registry) -> None:
    while True:
        await trio.sleep(MARK_EVERY_SECONDS)
        try:
            await registry.save_replay_mark()
        except AssayError as exc:  # the probe reports the database; retried next turn
            log.warning("replay mark not saved: %s", exc)


def _replay_progress(notifier: Notifier) -> Callable[[int, int], None]:
    """Startup replay that reads many records keeps systemd's start timeout at bay while
    it makes progress, and says how far it is in STATUS=. Called from a worker thread."""

    def report(scanned: int, mutations: int) -> None:
        notifier.send(
            f"EXTEND_TIMEOUT_USEC={int(EXTEND_USEC)}\n"
            f"STATUS=replaying the audit log: {scanned} records read, {mutations} mutations"
        )

    return report


#: Each progress report buys this much more start time (reports come far more often).
EXTEND_USEC = 30_000_000


async def _signals(shutdown: trio.Event, notifier: Notifier) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for _sig in signals:
            log.info("shutdown requested")
            notifier.stopping()
            shutdown.set()
            return


async def _sweeper(registry: Registry, interval: float, notifier: Notifier) -> None:
    while True:
        await trio.sleep(interval)
        try:
            await registry.sweep()
        except Exception:
            log.exception("integrity sweep failed")
        notifier.status(_status_line(registry.counts(), registry.last_sweep))


async def _watchdog(notifier: Notifier, interval: float, probe: Probe) -> None:
    """Ping only while the loop runs and the probe recently found store, database and
    audit log all usable: a daemon that cannot write is restarted, not kept alive."""
    while True:
        if probe.healthy():
            notifier.watchdog()
        else:
            log.error("watchdog: store, database or audit not usable; withholding ping")
        await trio.sleep(interval)


async def _fault_switch(loaded: LoadedConfig) -> None:
    """Test-only: when the file named by $ASSAY_TEST_FAULTS appears, block the loop.

    Refused unless ``watchdog.allow_fault_injection: true`` in config, which production
    configs never set; it exists so the systemd tests can prove the watchdog restarts a
    hung daemon.
    """
    flag = os.environ[FAULT_ENV]
    while True:
        await trio.sleep(0.5)
        if await trio.to_thread.run_sync(os.path.exists, flag):
            log.critical("fault injection: hanging the event loop")
            time.sleep(3600)  # deliberately blocks the loop  # noqa: ASYNC251
