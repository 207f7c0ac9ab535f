"""The admin listener both daemons run beside their public one (``admin:`` in config).

Why a second app on a second socket: operators' routes (``/metrics``, the relay's table
reload) must not be reachable from the public API, and the public API's routes must not
be reachable here; two apps with two URL maps on two sockets make both true by
construction. Everything a request gets on the public listener it gets here too, from
the same core pieces: the connection guard (its own table and limits), the header cap,
the parser's refusals, the web edge (bearer auth that fails closed, problems, security
headers) and one audit record per request, in the daemon's own audit log.

Routes: ``GET /metrics`` (``admin:metrics``), ``GET /admin/v1/posture``
(``admin:posture``: the deployment's posture report, ``assay.core.posture.report``, from
a fresh probe), and the daemon's own (the relay's table reload).

The gate: every admin route declares an ``admin:*`` scope (``assay.core.admin_config``)
and a route that does not is refused at startup (no public route here, not even a
health check: the public listener has those).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any, cast

import trio
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.routing import Map

from assay.core import apidoc, refusals, serving, unix_listen
from assay.core.admin_config import METRICS_SCOPE, POSTURE_SCOPE, AdminConfig
from assay.core.asgi import ASGIApp, HeaderCap, RecordBeforeDisconnect
from assay.core.audit.writer import AuditWriter
from assay.core.authn import Authenticator
from assay.core.connlimits import Limits
from assay.core.metrics import UNMATCHED, CountRequests, Metrics, RouteNamer, audit_gauges
from assay.core.web import AuditSink, current_audit, install, requires

log = logging.getLogger("assay.admin")

LISTENER = "admin"
#: The text exposition format's media type (prometheus_client's CONTENT_TYPE_LATEST).
CONTENT_TYPE = "text/plain"


class MarkedAudit:
    """The daemon's audit log, each record marked ``extra.listener: admin``: an auditor
    tells an admin request from a public one even when it was refused before routing."""

    def __init__(self, inner: AuditSink) -> None:
        self.inner = inner

    async def append(self, fields: dict[str, Any]) -> Mapping[str, Any]:
        extra = dict(fields.get("extra") or {})
        extra["listener"] = LISTENER
        return await self.inner.append({**fields, "extra": extra})


def create_admin_app(
    name: str,
    *,
    authenticator: Authenticator,
    audit: AuditSink,
    metrics: Metrics,
    routes: Callable[[QuartTrio], None] | None = None,
    posture: Callable[[], Mapping[str, Any]] | None = None,
) -> QuartTrio:
    """The admin app: ``GET /metrics``, ``GET /admin/v1/posture`` when ``posture`` is
    given (blocking: a fresh probe of the deployment, ``assay.core.posture``), and
    whatever ``routes`` adds (each scoped)."""
    app = QuartTrio(f"assay.admin.{name}")
    app.config["MAX_CONTENT_LENGTH"] = 4096
    app.config["BODY_TIMEOUT"] = 10

    def route() -> str:
        # Never the raw path of a request no route matched: it is the caller's text.
        rule = request.url_rule
        return f"{request.method} {rule.rule if rule is not None else UNMATCHED}"

    install(app, authenticator=authenticator, audit=MarkedAudit(audit), param_names=list,
            route=route)  # fmt: skip

    @app.get("/metrics")
    @requires(METRICS_SCOPE)
    @apidoc.declare({200: apidoc.Reply("Prometheus text exposition", media=CONTENT_TYPE)})
    async def metrics_route() -> Response:
        """Prometheus text exposition of this daemon's metrics."""
        current_audit().action = "admin.metrics"
        body, content_type = metrics.render()
        return Response(body, status=200, content_type=content_type)

    if posture is not None:
        add_posture_route(app, posture)
    if routes is not None:
        routes(app)
    check_admin_routes(app)
    return app


def add_posture_route(app: QuartTrio, posture: Callable[[], Mapping[str, Any]]) -> None:
    """``GET /admin/v1/posture``: the report ``assay doctor --json`` prints, probed now.

    The probe reads the host (modes, keys, the audit chain's head), so it runs in a
    worker thread, one at a time: a caller cannot stack probes up.
    """
    one_at_a_time = trio.Lock()

    @app.get("/admin/v1/posture")
    @requires(POSTURE_SCOPE)
    @apidoc.declare({200: apidoc.Reply("The posture report (assay.posture.v1)")})
    async def posture_route() -> Response:
        """The deployment's posture: profile, findings, evidence, waivers."""
        audit = current_audit()
        audit.action = "admin.posture"
        async with one_at_a_time:
            doc = dict(await trio.to_thread.run_sync(posture))
        audit.extra.update(profile=doc.get("profile"), ok=doc.get("ok"), worst=doc.get("worst"))
        body = json.dumps(doc, sort_keys=True, separators=(",", ":"))
        return Response(body, status=200, content_type="application/json")


def check_admin_routes(app: QuartTrio) -> None:
    """Fail closed: every admin route needs an ``admin:*`` scope; none is public."""
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        scope = getattr(app.view_functions[rule.endpoint], "required_scope", None)
        if not isinstance(scope, str) or not scope.startswith("admin:"):
            raise RuntimeError(f"admin route {rule.rule} has no admin:* scope")


def admin_asgi(app: QuartTrio, admin: AdminConfig, audit: AuditWriter, metrics: Metrics) -> ASGIApp:
    """The layers the public listener has, around the admin app, counted as ``admin``."""
    namer = RouteNamer(app.url_map)

    def audit_route(method: str, path: str) -> str:
        label, template = namer(method, path)
        return f"{label} {template}"

    capped = HeaderCap(
        RecordBeforeDisconnect(cast(ASGIApp, app)),
        max_header_bytes=admin.max_header_bytes,
        audit=MarkedAudit(audit),
        route=audit_route,
    )
    return CountRequests(capped, metrics, listener=LISTENER, namer=namer)


def limits_of(admin: AdminConfig) -> Limits:
    return Limits(
        max_connections=admin.max_connections,
        keep_alive=admin.keep_alive_timeout_seconds,
        header_read=admin.header_read_timeout_seconds,
        request=admin.request_timeout_seconds,
    )


def watch_audit(metrics: Metrics, audit: AuditWriter) -> None:
    """The audit writer's batches and queue, in ``metrics``."""
    audit.batch_observer = metrics.observe_audit_batch
    metrics.add_gauges(audit_gauges(audit))


async def serve(
    admin: AdminConfig,
    *,
    base: Path,
    app: QuartTrio,
    audit: AuditWriter,
    metrics: Metrics,
    shutdown: trio.Event,
    drained: trio.Event,
    shutdown_seconds: float,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """The admin listener until ``shutdown`` (started with ``nursery.start``)."""
    listener: unix_listen.UnixListener | None = None
    binds: list[str] = []
    shown: list[str] = []
    try:
        if admin.unix_socket is not None:
            path = Path(admin.unix_socket)
            path = path if path.is_absolute() else base / path
            listener = await trio.to_thread.run_sync(
                lambda: unix_listen.bind_stream(
                    path, admin.unix_socket_mode, where="admin.unix_socket"
                )
            )
            # hypercorn closes the sockets it serves: it gets a duplicate, this the original
            # (closed, and its file removed, on the way out).
            binds.append(f"fd://{os.dup(listener.sock.fileno())}")
            shown.append(f"admin unix:{path}")
        if admin.bind is not None:
            binds.append(admin.bind)
        hc = serving.guarded_config(
            binds,
            max_header_bytes=admin.max_header_bytes,
            limits=limits_of(admin),
            shutdown_seconds=shutdown_seconds,
        )
        refusals.install(hc, MarkedAudit(audit))
        asgi = admin_asgi(app, admin, audit, metrics)

        async def started_as(task_status: trio.TaskStatus[list[str]]) -> None:
            await serving.serve(asgi, hc, shutdown, drained, task_status=task_status)

        async with trio.open_nursery() as nursery:
            tcp: list[str] = await nursery.start(started_as)
            shown += [f"admin {b}" for b in tcp if not b.startswith("http://unix:")]
            task_status.started(shown)
    finally:
        if listener is not None:
            listener.close()


async def start(
    nursery: trio.Nursery,
    admin: AdminConfig | None,
    *,
    base: Path,
    app: Callable[[Metrics], QuartTrio],
    audit: AuditWriter,
    metrics: Metrics | None,
    shutdown: trio.Event,
    shutdown_seconds: float,
) -> tuple[list[str], trio.Event]:
    """Start the admin listener in the daemon's nursery, if configured: its binds (for
    the startup line) and the event set once it has drained (before the audit closes)."""
    drained = trio.Event()
    if admin is None or metrics is None:
        drained.set()
        return [], drained
    binds: list[str] = await nursery.start(
        partial(
            serve,
            admin,
            base=base,
            app=app(metrics),
            audit=audit,
            metrics=metrics,
            shutdown=shutdown,
            drained=drained,
            shutdown_seconds=shutdown_seconds,
        )
    )
    return binds, drained


async def wait_drained(drained: trio.Event, seconds: float) -> None:
    """Bounded: the admin requests in flight finish and leave their records first."""
    with trio.move_on_after(seconds + 5):
        await drained.wait()


def public_metrics(app: ASGIApp, metrics: Metrics | None, url_map: Map) -> ASGIApp:
    """The public listener's outermost layer when there are metrics: counted as ``public``."""
    if metrics is None:
        return app
    return CountRequests(app, metrics, listener="public", namer=RouteNamer(url_map))
