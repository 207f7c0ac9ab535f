"""The relay's part of the admin listener: table reload, and the snapshot gauges.

``POST /admin/v1/tables/{dataset}/{table}/reload`` reloads one table now, as its refresh
mode or SIGHUP would (``SnapshotStore.reload``: decoded off the loop, swapped in one
assignment), and answers the snapshot then serving: its generation and load time, or
``relay.reload_failed`` (409) with the reason and the generation that keeps serving.
Its one audit record (``relay.table_reload``, with the outcome) is written before a new
snapshot serves; a reload whose record cannot be written swaps nothing.

The gauges are labelled by the config's own dataset and table ids (bounded by the
config), never by a value, a digest or a path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client.core import GaugeMetricFamily, Metric
from quart import Response
from quart_trio import QuartTrio

from assay.core import apidoc
from assay.core.admin_config import RELOAD_SCOPE
from assay.core.errors import NotFound
from assay.core.web import current_audit, record_request, requires
from assay.relay.errors import ReloadFailed
from assay.relay.service import dumps
from assay.relay.snapshot import Snapshot, SnapshotStore, TableState


def _find(store: SnapshotStore, dataset: str, table: str) -> TableState:
    for state in store.tables():
        if state.dataset == dataset and state.spec.id == table:
            return state
    raise NotFound("no such table", code="relay.table_unknown")


def _generation(snap: Snapshot | None) -> dict[str, object]:
    if snap is None:
        return {"generation": None, "loaded_at": None}
    return {"generation": snap.generation, "loaded_at": snap.loaded_at}


def reload_routes(store: SnapshotStore) -> Callable[[QuartTrio], None]:
    def add(app: QuartTrio) -> None:
        @app.post("/admin/v1/tables/<dataset>/<table>/reload")
        @requires(RELOAD_SCOPE)
        @apidoc.declare(
            {200: apidoc.Reply("The snapshot serving after the reload")}, problems=(404, 409)
        )
        async def reload_table(dataset: str, table: str) -> Response:
            """Reload one table from its source now; a failure keeps the old snapshot."""
            audit = current_audit()
            audit.action = "relay.table_reload"
            state = _find(store, dataset, table)
            audit.target = state.where
            failures = state.failures

            async def record_first(snap: Snapshot) -> None:
                # Step RLD-1: the request's record is durable before the new snapshot
                # serves; if it cannot be written, nothing was swapped (fail closed).
                audit.extra.update(changed=True, generation=snap.generation, outcome="reloaded")
                await record_request(200)

            changed = await store.reload(state, before_swap=record_first)
            kept = _generation(state.snapshot)
            audit.extra.update(changed=changed, generation=kept["generation"])
            if state.failures != failures and state.last_error is not None:
                audit.extra["outcome"] = "failed"
                raise ReloadFailed(
                    f"{state.where}: reload failed; the snapshot of generation "
                    f"{kept['generation']} keeps serving",
                    reasons=[state.last_error],
                    kept=kept,
                )
            audit.extra["outcome"] = "reloaded" if changed else "unchanged"
            snap = state.snapshot
            body = {
                "dataset": state.dataset,
                "table": state.spec.id,
                "changed": changed,
                "rows": snap.rows if snap else None,
                # The name answers carry (keyed), never the source's raw digest.
                "snapshot": store.tag(state.dataset, state.spec.id, snap) if snap else None,
                **kept,
            }
            return Response(dumps(body), status=200, content_type="application/json")

    return add


def snapshot_gauges(
    store: SnapshotStore, clock: Callable[[], float] = time.time
) -> Callable[[], Iterable[Metric]]:
    """Per table: snapshot age, generation, whether its last reload failed, failures."""

    def collect() -> Iterable[Metric]:
        labels = ("dataset", "table")
        age = GaugeMetricFamily(
            "assay_relay_snapshot_age_seconds",
            "Seconds since the serving snapshot was loaded.",
            labels=labels,
        )
        gen = GaugeMetricFamily(
            "assay_relay_snapshot_generation", "Generation of the serving snapshot.", labels=labels
        )
        stale = GaugeMetricFamily(
            "assay_relay_snapshot_stale",
            "1 when the last reload failed (the old snapshot serves).",
            labels=labels,
        )
        failed = GaugeMetricFamily(
            "assay_relay_reload_failures", "Failed reloads of the table since start.", labels=labels
        )
        now = clock()
        for state in store.tables():
            key = (state.dataset, state.spec.id)
            snap = state.snapshot
            if snap is not None:
                age.add_metric(key, max(0.0, now - snap.loaded_at))
                gen.add_metric(key, float(snap.generation))
            stale.add_metric(key, 1.0 if state.last_error is not None else 0.0)
            failed.add_metric(key, float(state.failures))
        return [age, gen, stale, failed]

    return collect
