"""Prometheus metrics for both daemons, served on the admin listener's ``/metrics``.

Why each daemon has its own ``CollectorRegistry``: the global one would mix two daemons
in one process (the tests run both) and carry whatever any imported library registers.

Low cardinality by construction, because a label value is a time series for good:
1. A request is labelled by its listener, its method (one of ``METHODS``, else
   ``OTHER``), its route *template* as the app declares it (``/v1/artifacts/<digest>``),
   else the one value ``unmatched``, and its status code (100..599, else ``other``).
   The template comes from matching the path against the app's own URL map
   (``RouteNamer``), never from the path, so no path, id, digest or query value can
   become a label value (tests/unit/test_metrics.py searches for one that does).
2. Everything else is a gauge read when scraped (``Gauges``), labelled only by names
   the config or the code declares (artifact states, table names), never by data.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import Map, RoutingException

from assay import __version__
from assay.core.asgi import ASGIApp, Receive, Scope, Send

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"
#: Seconds; from a health check (sub-millisecond) to a long upload or sweep.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)
AUDIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
SCAN_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)

GaugeSource = Callable[[], Iterable[Metric]]


class RouteNamer:
    """``(method, path)`` to ``(method label, route label)``: only declared templates.

    1. The method is kept if it is one of ``METHODS``, else ``OTHER``.
    2. A path a rule matches, with this method or another (a 405), is that rule's
       template; any other path (404, a redirect, a malformed one) is ``unmatched``.
    """

    def __init__(self, url_map: Map) -> None:
        self._adapter = url_map.bind("metrics.invalid")
        self.url_map = url_map

    def templates(self) -> frozenset[str]:
        """Every route label this namer can give."""
        return frozenset(r.rule for r in self.url_map.iter_rules()) | {UNMATCHED}

    def __call__(self, method: str, path: str) -> tuple[str, str]:
        label = method if method in METHODS else "OTHER"
        attempt = label if label != "OTHER" else "GET"
        for _ in range(2):
            try:
                rule, _args = self._adapter.match(path, method=attempt, return_rule=True)
            except MethodNotAllowed as exc:
                valid = sorted(exc.valid_methods or ())
                if not valid:
                    break
                attempt = valid[0]
                continue
            except (HTTPException, RoutingException, ValueError, UnicodeError):
                break
            return label, str(rule.rule)
        return label, UNMATCHED


def status_label(status: int) -> str:
    return str(status) if 100 <= status <= 599 else "other"


class _Gauges(Collector):
    """Gauges computed at scrape time by ``source`` (a function of the daemon's state)."""

    def __init__(self, source: GaugeSource) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        return list(self._source())


class Metrics:
    """One daemon's metrics: request counters and latencies, the audit writer's batches,
    and whatever gauges the daemon adds (``add_gauges``)."""

    def __init__(self, daemon: str) -> None:
        self.daemon = daemon
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "assay_http_requests",
            "HTTP requests answered, by route template and status.",
            ("listener", "method", "route", "status"),
            registry=self.registry,
        )
        self.latency = Histogram(
            "assay_http_request_duration_seconds",
            "From a request reaching the app to its answer's end, by route template.",
            ("listener", "method", "route"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.audit_batch = Histogram(
            "assay_audit_batch_write_seconds",
            "Time to write and fsync one batch of audit records (group commit).",
            ("outcome",),
            buckets=AUDIT_BUCKETS,
            registry=self.registry,
        )
        self.scans = Histogram(
            "assay_relay_scan_seconds",
            "Time one relay answer spends scanning its table, by kind of answer.",
            ("kind",),
            buckets=SCAN_BUCKETS,
            registry=self.registry,
        )
        self.add_gauges(self._info)

    def _info(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "assay_build_info", "The daemon and its version.", labels=("daemon", "version")
        )
        info.add_metric((self.daemon, __version__), 1.0)
        return [info]

    def add_gauges(self, source: GaugeSource) -> None:
        self.registry.register(_Gauges(source))

    def observe_request(
        self, listener: str, method: str, route: str, status: int, seconds: float
    ) -> None:
        self.requests.labels(listener, method, route, status_label(status)).inc()
        self.latency.labels(listener, method, route).observe(seconds)

    def observe_audit_batch(self, records: int, seconds: float, ok: bool) -> None:
        del records  # the writer's own counters carry the record totals
        self.audit_batch.labels("ok" if ok else "failed").observe(seconds)

    def observe_scan(self, kind: str, seconds: float) -> None:
        self.scans.labels(kind).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The text exposition format, and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def label_values(self, label: str) -> set[str]:
        """Every value ``label`` has taken so far (for the cardinality tests)."""
        out: set[str] = set()
        for family in self.registry.collect():
            for sample in family.samples:
                if label in sample.labels:
                    out.add(sample.labels[label])
        return out


class CountRequests:
    """ASGI layer (outermost): one count and one latency per request, by template.

    The label is worked out from the path only after the answer, through ``namer``: a
    request that never reached a route (a 431, a 404) is still counted, as ``unmatched``
    or as its template.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, *, listener: str, namer: RouteNamer):
        self.app = app
        self.metrics = metrics
        self.listener = listener
        self.namer = namer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0
        counted = False

        def count() -> None:
            nonlocal counted
            if counted:
                return
            counted = True
            method, route = self.namer(str(scope.get("method", "")), str(scope.get("path", "")))
            self.metrics.observe_request(
                self.listener, method, route, status, time.perf_counter() - started
            )

        async def seen(message: MutableMapping[str, Any]) -> None:
            nonlocal status
            kind = message["type"]
            if kind == "http.response.start":
                status = int(message["status"])
            elif kind == "http.response.body" and not message.get("more_body"):
                # Counted before the answer's last bytes leave: a client that has its
                # answer finds it counted on its next scrape.
                count()
            await send(message)

        try:
            await self.app(scope, receive, seen)
        finally:
            count()  # an answer cut short (the client left) still counts, by its status


def audit_gauges(writer: Any) -> GaugeSource:
    """The audit writer's queue depth, head, health and failure counters."""

    def collect() -> Iterable[Metric]:
        stats = writer.metrics()
        depth = GaugeMetricFamily(
            "assay_audit_queue_depth", "Audit appends waiting for their batch to be written."
        )
        depth.add_metric((), float(writer.outstanding))
        head = GaugeMetricFamily("assay_audit_head_seq", "Sequence number of the last record.")
        head.add_metric((), float(stats["head_seq"]))
        healthy = GaugeMetricFamily("assay_audit_healthy", "1 while audit records are written.")
        healthy.add_metric((), 1.0 if stats["healthy"] else 0.0)
        out: list[Metric] = [depth, head, healthy]
        for key, name, text in (
            ("records_written", "assay_audit_records_written", "Records written since start."),
            ("fsyncs", "assay_audit_fsyncs", "fsync calls on the audit log since start."),
            ("checkpoints", "assay_audit_checkpoints", "Signed checkpoints since start."),
            (
                "dropped_records",
                "assay_audit_dropped_records",
                "Records dropped (availability_first) since start.",
            ),
            ("failed_batches", "assay_audit_failed_batches", "Batches that failed to write."),
        ):
            out.append(CounterMetricFamily(name, text, value=float(stats[key])))
        return out

    return collect
