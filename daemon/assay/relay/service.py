"""The relay's operations: resolve names, plan, take one snapshot, answer, fill the audit.

Why between the routes and the pure modules: this is where a request takes its one
snapshot reference (and keeps it across the worker thread that scans it), where cursors
are checked against that snapshot, and where the audit record learns the filter names,
ops, keyed hashes, row counts and suppressed groups. Routes stay thin.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from assay.core.audit.chain import redact
from assay.core.errors import BadRequest, NotFound
from assay.core.web import RequestAudit
from assay.relay import cursor, disclosure, jws, planner, query
from assay.relay.config import Aggregate, Dataset, Entity, RelayConfig, Table
from assay.relay.planner import Bounds, FieldSpec
from assay.relay.snapshot import Snapshot, SnapshotStore

#: Scans over more rows than this run in a worker thread so the loop keeps answering.
THREAD_ROWS = 20_000


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, default=planner.canonical, separators=(",", ":")).encode()


@dataclass(frozen=True)
class EntityView:
    """An entity with its lookups precomputed once at startup."""

    dataset: Dataset
    entity: Entity
    table: Table
    fields: tuple[FieldSpec, ...]
    allowed: dict[str, frozenset[str]]
    key: FieldSpec

    @property
    def by_name(self) -> dict[str, FieldSpec]:
        return {f.name: f for f in self.fields}


def _entity_view(ds: Dataset, entity: Entity) -> EntityView:
    table = next(t for t in ds.tables if t.id == entity.table)
    types = {c.name: c.type for c in table.columns}
    fields = tuple(FieldSpec(f.name, f.column, types[f.column], f.sensitive) for f in entity.fields)
    allowed: dict[str, frozenset[str]] = {f.field: frozenset(f.ops) for f in entity.allowed_filters}
    exposed = next((f for f in fields if f.column == table.primary_key), None)
    # An unexposed key is still looked up by /records/{id}; the audit hashes it.
    key = exposed or FieldSpec("id", table.primary_key, types[table.primary_key], True)
    return EntityView(ds, entity, table, fields, allowed, key)


class Relay:
    def __init__(
        self,
        config: RelayConfig,
        store: SnapshotStore,
        *,
        audit_key: bytes,
        signing_key: Ed25519PrivateKey | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.signing_key = signing_key
        self.clock = clock
        self._cursor_key = cursor.derive_key(audit_key, "cursor")
        self._redact_key = audit_key
        server = config.server
        self.bounds = Bounds(server.max_filters, server.max_in_values, server.max_value_chars)
        self.datasets = {d.id: d for d in config.datasets}
        self.entities = {
            (d.id, e.name): _entity_view(d, e) for d in config.datasets for e in d.entities
        }

    # --- names -------------------------------------------------------------------------

    def dataset(self, dataset_id: str) -> Dataset:
        ds = self.datasets.get(dataset_id)
        if ds is None:
            raise NotFound("no such dataset", code="dataset.not_found")
        return ds

    def entity(self, ds: Dataset, name: str) -> EntityView:
        view = self.entities.get((ds.id, name))
        if view is None:
            raise NotFound("no such entity in this dataset", code="entity.not_found")
        return view

    def aggregate_spec(self, ds: Dataset, agg_id: str) -> tuple[Aggregate, EntityView]:
        agg = next((a for a in ds.aggregates if a.id == agg_id), None)
        if agg is None:
            raise NotFound("no such aggregate in this dataset", code="aggregate.not_found")
        return agg, self.entities[(ds.id, agg.source_entity)]

    def redactor(self, value: str) -> str:
        """The audit core's keyed hash: equal values give equal tags under one key."""
        return redact(self._redact_key, value)

    def snapshot(self, view: EntityView) -> Snapshot:
        return self.store.get(view.dataset.id, view.table.id)

    # --- metadata ------------------------------------------------------------------------

    def dataset_doc(self, ds: Dataset) -> dict[str, Any]:
        return {
            "id": ds.id,
            "title": ds.title,
            "description": ds.description,
            "owner": ds.owner,
            "sensitivity": ds.sensitivity,
            "access_rights": ds.access_rights,
            "update_frequency": ds.update_frequency,
            "entities": [{"name": e.name, "title": e.title} for e in ds.entities],
            "aggregates": [self.aggregate_doc(ds, a) for a in ds.aggregates],
        }

    def aggregate_doc(self, ds: Dataset, agg: Aggregate) -> dict[str, Any]:
        return {
            "id": agg.id,
            "title": agg.title,
            "description": agg.description,
            "source_entity": agg.source_entity,
            "dimensions": list(agg.dimensions),
            "indicators": [i.model_dump() for i in agg.indicators],
            "allowed_filters": [f.model_dump() for f in agg.allowed_filters],
            "disclosure_control": agg.disclosure_control.model_dump(),
        }

    def entity_doc(self, view: EntityView) -> dict[str, Any]:
        e = view.entity
        snap = self.store.status().get(f"{view.dataset.id}.{view.table.id}", {})
        return {
            "dataset": view.dataset.id,
            "name": e.name,
            "title": e.title,
            "description": e.description,
            "fields": [
                {"name": f.name, "type": f.type, "sensitive": f.sensitive} for f in view.fields
            ],
            "allowed_filters": [f.model_dump() for f in e.allowed_filters],
            "required_filters": list(e.required_filters),
            "default_limit": e.default_limit,
            "max_limit": e.max_limit,
            "require_purpose_header": e.require_purpose_header,
            "snapshot": {"digest": snap.get("digest"), "loaded_at": snap.get("loaded_at")},
        }

    # --- answers -------------------------------------------------------------------------

    async def records(
        self, view: EntityView, args: Sequence[tuple[str, str]], audit: RequestAudit
    ) -> tuple[dict[str, Any], dict[str, Any], Snapshot]:
        e = view.entity
        plan = planner.plan_records(
            args,
            fields=view.fields,
            allowed=view.allowed,
            required=e.required_filters,
            default_limit=e.default_limit,
            max_limit=e.max_limit,
            bounds=self.bounds,
            max_cursor_chars=self.config.server.max_cursor_chars,
        )
        audit.extra.update(planner.audit_extra(plan.conditions, self.redactor))
        snap = self.snapshot(view)  # the one snapshot this request sees
        normalized = plan.normalized()
        bound = cursor.binding(view.dataset.id, e.name, normalized, snap.digest)
        offset = 0 if plan.cursor is None else cursor.decode(self._cursor_key, bound, plan.cursor)
        audit.extra["cursor"] = plan.cursor is not None

        def run() -> query.Page:
            return query.page(
                snap.data,
                plan.conditions,
                plan.fields,
                offset=offset,
                limit=plan.limit,
                index=snap.index,
                key_column=view.table.primary_key,
            )

        result = await trio.to_thread.run_sync(run) if snap.rows > THREAD_ROWS else run()
        audit.extra["row_count"] = len(result.records)
        body = {
            "dataset": view.dataset.id,
            "entity": e.name,
            "snapshot": snap.digest,
            "count": len(result.records),
            "records": result.records,
            "next_cursor": None
            if result.next_offset is None
            else cursor.encode(self._cursor_key, bound, result.next_offset),
        }
        return body, {**normalized, "offset": offset}, snap

    def record(
        self, view: EntityView, raw_id: str, audit: RequestAudit
    ) -> tuple[dict[str, Any], dict[str, Any], Snapshot]:
        key = view.key
        try:
            value = planner.parse_value(raw_id, key.type, self.bounds)
        except BadRequest:
            raise BadRequest(
                f"record id is not a valid {key.type}", code="record.id_invalid"
            ) from None
        shown = planner.canonical(value)
        if key.sensitive:
            audit.extra["record_id_hash"] = self.redactor(str(shown))
        else:
            audit.extra["record_id"] = shown
        snap = self.snapshot(view)
        found = query.lookup(snap.data, snap.index, value, view.fields)
        audit.extra["row_count"] = 0 if found is None else 1
        if found is None:
            raise NotFound("no such record", code="record.not_found")
        body = {
            "dataset": view.dataset.id,
            "entity": view.entity.name,
            "snapshot": snap.digest,
            "record": found,
        }
        return body, {"id": shown, "fields": [f.name for f in view.fields]}, snap

    async def aggregate(
        self,
        ds: Dataset,
        agg: Aggregate,
        view: EntityView,
        args: Sequence[tuple[str, str]],
        audit: RequestAudit,
    ) -> tuple[dict[str, Any], dict[str, Any], Snapshot]:
        if any(k in planner.RESERVED for k, _ in args):
            raise BadRequest("aggregates take only filters", code="aggregate.filter_not_allowed")
        conditions = planner.parse_conditions(
            args,
            fields=view.by_name,
            allowed={f.field: frozenset[str](f.ops) for f in agg.allowed_filters},
            required=(),
            bounds=self.bounds,
            prefix="aggregate",
        )
        audit.extra.update(planner.audit_extra(conditions, self.redactor))
        snap = self.snapshot(view)

        def run() -> disclosure.AggregateAnswer:
            mask = query.mask_for(snap.data, conditions)
            return disclosure.aggregate(snap.data, mask, agg, view.by_name)

        answer = await trio.to_thread.run_sync(run) if snap.rows > THREAD_ROWS else run()
        audit.extra["row_count"] = len(answer.groups)
        audit.extra["suppressed_groups"] = answer.suppressed_groups
        dc = agg.disclosure_control
        body = {
            "dataset": ds.id,
            "aggregate": agg.id,
            "snapshot": snap.digest,
            "dimensions": list(agg.dimensions),
            "groups": answer.groups,
            "suppressed_groups": answer.suppressed_groups,
            "suppressed_values": answer.suppressed_values,
            "disclosure_control": {
                "min_group_size": dc.min_group_size,
                "suppression": dc.suppression,
            },
            "totals": {"over": "published_values", **answer.totals},
        }
        normalized = {
            "filters": [
                [c.field, c.op, [planner.canonical(v) for v in c.values]] for c in conditions
            ]
        }
        return body, normalized, snap

    def sign(
        self, dataset: str, route: str, snapshot: str, query_doc: dict[str, Any],
        answer: dict[str, Any], answer_id: str,
    ) -> str:  # fmt: skip
        signing = self.config.instance.answer_signing
        assert signing is not None and self.signing_key is not None
        claims = jws.answer_claims(
            issuer=self.config.instance.id,
            dataset=dataset,
            snapshot=snapshot,
            query={"route": route, **query_doc},
            answer=json.loads(dumps(answer)),
            now=self.clock(),
            ttl_seconds=signing.ttl_seconds,
            answer_id=answer_id,
        )
        return jws.sign(self.signing_key, signing.key_id, claims)
