"""Metric labels stay bounded whatever a caller sends (``assay.core.metrics``).

The attack: a label value is a time series kept for the process's life, so a path, an
id or a query value that became one would let any caller grow the daemon's memory and
leak what it asked for into every scrape. These tests drive the real ASGI layer
(``CountRequests``) with the real apps' URL maps and search for a request whose labels
are not a declared template, a known method or a status code.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from quart import Response
from quart_trio import QuartTrio

from assay.core.admin import check_admin_routes, create_admin_app, watch_audit
from assay.core.metrics import METHODS, UNMATCHED, CountRequests, Metrics, RouteNamer
from assay.core.web import public
from tests.relay.conftest import FakeAudit, build_env
from tests.route_templates import registry_app

STATUSES = {str(s) for s in range(100, 600)} | {"other"}


@pytest.fixture(scope="module")
def namers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, RouteNamer]:
    from assay.relay.settings import load_config, load_secrets
    from assay.relay.wiring import assemble

    tmp = tmp_path_factory.mktemp("apps")
    env = build_env(tmp / "relay", people=20)
    loaded = load_config(env.config_path)
    parts = assemble(loaded, load_secrets(loaded), audit=FakeAudit())
    (tmp / "registry").mkdir()
    admin = create_admin_app("t", authenticator=parts.authenticator, audit=FakeAudit(),
                             metrics=Metrics("t"))  # fmt: skip
    return {
        "registry": RouteNamer(registry_app(tmp / "registry").url_map),
        "relay": RouteNamer(parts.app.url_map),
        "admin": RouteNamer(admin.url_map),
    }


async def _answer(status: int) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


segment = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=24)
paths = st.one_of(
    st.lists(segment, max_size=6).map(lambda parts: "/" + "/".join(parts)),
    st.sampled_from(["/v1/artifacts/", "/v1/trusted/", "/v1/datasets/civil/entities/"]).flatmap(
        lambda base: segment.map(lambda tail: base + tail)
    ),
    segment,
)
methods = st.one_of(st.sampled_from(sorted(METHODS)), st.text(max_size=12))


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    requests=st.lists(
        st.tuples(st.sampled_from(["registry", "relay", "admin"]), methods, paths,
                  st.binary(max_size=40), st.integers(-5, 1000)),
        min_size=1, max_size=20,
    )
)  # fmt: skip
def test_random_paths_methods_and_queries_never_add_an_undeclared_label_value(
    namers: dict[str, RouteNamer], requests: list[tuple[str, str, str, bytes, int]]
) -> None:
    metrics = Metrics("test")

    async def drive() -> None:
        for app_name, method, path, query, status in requests:
            layer = CountRequests(await _answer(status), metrics, listener=app_name,
                                  namer=namers[app_name])  # fmt: skip
            scope: MutableMapping[str, Any] = {"type": "http", "method": method, "path": path,
                                               "query_string": query, "headers": []}  # fmt: skip

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(_message: MutableMapping[str, Any]) -> None:
                return None

            await layer(scope, receive, send)

    trio.run(drive)
    declared = set().union(*(n.templates() for n in namers.values()))
    assert metrics.label_values("route") <= declared
    assert metrics.label_values("method") <= METHODS | {"OTHER"}
    assert metrics.label_values("status") <= STATUSES
    assert metrics.label_values("listener") <= {"registry", "relay", "admin"}
    total = sum(1 for f in metrics.registry.collect() if f.name == "assay_http_requests"
                for s in f.samples if s.name.endswith("_total"))  # fmt: skip
    assert total <= len(requests)


def test_a_path_is_named_by_its_template_even_under_another_method(
    namers: dict[str, RouteNamer],
) -> None:
    reg = namers["registry"]
    digest = "sha256:" + "ab" * 32
    assert reg("GET", f"/v1/artifacts/{digest}") == ("GET", "/v1/artifacts/<digest>")
    assert reg("POST", "/v1/artifacts") == ("POST", "/v1/artifacts")  # the upload adapter
    assert reg("BREW", f"/v1/artifacts/{digest}") == ("OTHER", "/v1/artifacts/<digest>")
    assert reg("GET", "/v1/trusted/a/b/c.gguf") == ("GET", "/v1/trusted/<path:name>")
    assert reg("GET", "/v1/artifacts/") == ("GET", UNMATCHED)  # a redirect is not a route
    rel = namers["relay"]
    assert rel("GET", "/v1/datasets/civil/entities/person/records/P0001")[1] == (
        "/v1/datasets/<dataset>/entities/<entity>/records/<record_id>"
    )
    assert namers["admin"]("GET", "/metrics/../v1/artifacts") == ("GET", UNMATCHED)


def test_an_admin_route_without_an_admin_scope_stops_startup() -> None:
    app = QuartTrio("t")

    @app.get("/admin/v1/open")
    @public
    async def open_route() -> Response:
        return Response("")

    with pytest.raises(RuntimeError, match="no admin:\\* scope"):
        check_admin_routes(app)


def test_each_daemon_has_its_own_registry_not_the_global_one() -> None:
    from prometheus_client import REGISTRY

    one, two = Metrics("registry"), Metrics("relay")
    one.observe_request("public", "GET", "/x", 200, 0.01)
    assert b'route="/x"' in one.render()[0] and b'route="/x"' not in two.render()[0]
    assert b'route="/x"' not in __import__("prometheus_client").generate_latest(REGISTRY)


async def test_audit_queue_and_batch_times_including_a_failed_batch(tmp_path: Path) -> None:
    """Through the real writer: batches are timed by outcome, the queue drains to 0, and
    a disk that fails shows as a failed batch (the fault is injected at the write)."""
    from tests.unit.test_audit_writer import Faults, _append_many, _writer

    faults = Faults()
    writer = _writer(tmp_path, faults, write_policy="availability_first")
    metrics = Metrics("registry")
    watch_audit(metrics, writer)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await _append_many(writer, 20)
        faults.fail_write = True
        await _append_many(writer, 3)
        text = metrics.render()[0].decode()
        await writer.close()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    counts = {s.labels["outcome"]: s.value for s in families["assay_audit_batch_write_seconds"
              ].samples if s.name.endswith("_count")}  # fmt: skip
    assert counts["ok"] >= 1 and counts["failed"] >= 1
    assert families["assay_audit_queue_depth"].samples[0].value == 0
    assert families["assay_audit_dropped_records"].samples[0].value == 3
    assert families["assay_audit_records_written"].samples[0].value == 20
