"""The relay's operations: resolve names, plan, take one snapshot, answer, fill the audit.

Why between the routes and the pure modules: this is where a request's names are
resolved for its credential (``access``: unknown and invisible answer alike), where it
takes its one snapshot reference (and keeps it across the worker thread that scans it),
where cursors are checked against that snapshot and that credential, where row budgets
are reserved before data is touched and spent durably before rows leave, and where the
audit record learns the filter names, ops, keyed hashes, row counts and suppressed
groups. Routes stay thin.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from assay.core.audit.chain import redact
from assay.core.errors import BadRequest, NotFound, ScopeDenied
from assay.core.web import RequestAudit
from assay.relay import access, conflicts, cursor, disclosure, jws, order, planner, query
from assay.relay.budgetstore import BudgetStore, Grant, Key, headers
from assay.relay.config import Aggregate, Dataset, RelayConfig, RowBudget
from assay.relay.errors import BudgetExhausted
from assay.relay.pglive import LiveTag
from assay.relay.planner import Bounds, Condition
from assay.relay.snapshot import Snapshot, SnapshotStore
from assay.relay.views import EntityView, Target, entity_view, lookup_refused

#: Scans over more rows than this run in a worker thread so the loop keeps answering.
THREAD_ROWS = 20_000


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, default=planner.canonical, separators=(",", ":")).encode()


def charge(rows: int) -> int:
    """What an answer costs: its rows, and at least 1 for every request whose filters
    were evaluated, since a miss (no row, no group) is an answer about the data too."""
    return max(1, rows)


def _exhausted_headers(policy: RowBudget, reset: int) -> dict[str, str]:
    return {**headers(policy, 0, reset), "Retry-After": str(reset)}


class Relay:
    def __init__(
        self,
        config: RelayConfig,
        store: SnapshotStore,
        *,
        audit_key: bytes,
        signing_key: Ed25519PrivateKey | None,
        clock: Callable[[], float] = time.time,
        budgets: BudgetStore | None = None,
        readers: Mapping[tuple[str, str], tuple[tuple[str, str], ...]] | None = None,
    ) -> None:
        self.config = config
        #: Per aggregate, the entities over its table or file (``conflicts.readers``).
        self.readers = dict(readers or {})
        self.store = store
        self.signing_key = signing_key
        self.clock = clock
        self.budgets = budgets
        self._cursor_key = cursor.derive_key(audit_key, "cursor")
        self._order_key = cursor.derive_key(audit_key, "row-order")
        self._redact_key = audit_key
        #: Per entity that hides its key: (snapshot digest, its columns in keyed order).
        self._ordered: dict[tuple[str, str], tuple[str, pa.Table]] = {}
        server = config.server
        self.bounds = Bounds(server.max_filters, server.max_in_values, server.max_value_chars)
        self.datasets = {d.id: d for d in config.datasets}
        self.entities = {
            (d.id, e.name): entity_view(d, e) for d in config.datasets for e in d.entities
        }
        #: Told ``(kind, seconds)`` for each table scan (the admin listener's metrics).
        self.scan_observer: Callable[[str, float], None] | None = None

    def _scanned(self, kind: str, started: float) -> None:
        if self.scan_observer is not None:
            self.scan_observer(kind, time.perf_counter() - started)

    # --- names -------------------------------------------------------------------------

    def resolve(
        self,
        scopes: frozenset[str],
        dataset: str,
        entity: str | None = None,
        aggregate: str | None = None,
    ) -> Target:
        """The names of one path, each unknown *or not known to these scopes* answering
        the same ``access.hidden()`` (see ``assay.relay.access``)."""
        ds = self.datasets.get(dataset)
        if ds is None or not access.knows_dataset(scopes, ds):
            raise access.hidden()
        view: EntityView | None = None
        agg: Aggregate | None = None
        if entity is not None:
            view = self.entities.get((ds.id, entity))
        if aggregate is not None:
            agg = next((a for a in ds.aggregates if a.id == aggregate), None)
            if agg is None:
                raise access.hidden()
            view = self.entities[(ds.id, agg.source_entity)]
        if (entity is not None or aggregate is not None) and (
            view is None or not access.knows_entity(scopes, ds, view.entity)
        ):
            raise access.hidden()
        return Target(ds, view, agg)

    def refuse_conflict(self, scopes: frozenset[str], target: Target) -> None:
        """An aggregate is refused to a credential that may also read an entity over its
        table or file (``assay.relay.conflicts``): for it, suppression hides nothing. API
        keys are refused at startup already; this covers the token file's credentials."""
        agg = target.aggregate
        assert agg is not None
        over = self.readers.get((target.dataset.id, agg.id), ())
        hit = conflicts.conflicting(scopes, self.config.datasets, over)
        if hit is not None:
            raise ScopeDenied(
                f"this credential may also read the entity {hit[0]}/{hit[1]}, over the rows "
                "this aggregate groups; ask with a credential that reads none of them",
                code="auth.scope_conflict",
                reasons=[f"reads {hit[0]}/{hit[1]} over the aggregate's population"],
            )

    def listed(self, ds: Dataset, scopes: frozenset[str]) -> list[EntityView]:
        """The entities a dataset's metadata shows to these scopes."""
        return [
            self.entities[(ds.id, e.name)] for e in ds.entities if access.lists_entity(scopes, e)
        ]

    def redactor(self, value: str) -> str:
        """The audit core's keyed hash: equal values give equal tags under one key."""
        return redact(self._redact_key, value)

    def snapshot(self, view: EntityView) -> Snapshot:
        return self.store.get(view.dataset.id, view.table.id)

    def published(self, view: EntityView, snap: Snapshot | LiveTag) -> str:
        """The snapshot's name in answers and signed claims: a keyed tag, never the
        source's SHA-256 (``snapshot.snapshot_tagger``); a live table's tag likewise."""
        return self.store.tag(view.dataset.id, view.table.id, snap)

    # --- metadata ------------------------------------------------------------------------

    def dataset_doc(self, ds: Dataset, scopes: frozenset[str]) -> dict[str, Any]:
        shown = {v.entity.name for v in self.listed(ds, scopes)}
        return {
            "id": ds.id,
            "title": ds.title,
            "description": ds.description,
            "owner": ds.owner,
            "sensitivity": ds.sensitivity,
            "access_rights": ds.access_rights,
            "update_frequency": ds.update_frequency,
            "entities": [
                {"name": e.name, "title": e.title} for e in ds.entities if e.name in shown
            ],
            "aggregates": [
                self.aggregate_doc(ds, a) for a in ds.aggregates if a.source_entity in shown
            ],
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
        budget = self.config.row_budget(e)
        snap = self.store.status().get(f"{view.dataset.id}.{view.table.id}", {})
        # "snapshot" is the keyed tag (SnapshotStore.tag), never the source's digest.
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
            "record_lookup": view.lookup,
            "row_budget": None if budget is None else budget.model_dump(),
            "snapshot": {"digest": snap.get("snapshot"), "loaded_at": snap.get("loaded_at")},
        }

    # --- budgets ------------------------------------------------------------------------

    def _budget(self, view: EntityView, who: str) -> tuple[Key, RowBudget] | None:
        policy = self.config.row_budget(view.entity)
        if policy is None or self.budgets is None:
            return None
        return (who, view.dataset.id, view.entity.name), policy

    def _reserve(
        self,
        budget: tuple[Key, RowBudget] | None,
        want: int,
        out: dict[str, str],
        *,
        whole: bool = False,
    ) -> Grant | None:
        """Reserve rows before data is touched; a spent budget is 429 with Retry-After."""
        if budget is None:
            return None
        assert self.budgets is not None
        key, policy = budget
        try:
            return self.budgets.reserve(key, policy, want, whole=whole)
        except BudgetExhausted:
            out.update(_exhausted_headers(policy, self.budgets.state(key, policy)[1]))
            raise

    async def _spend(self, grant: Grant | None, rows: int, out: dict[str, str]) -> None:
        """Spend the rows durably, before they leave; refused, ``out`` gets Retry-After."""
        if grant is None or not rows:
            return
        assert self.budgets is not None
        try:
            await self.budgets.spend(grant, rows)
        except BudgetExhausted:  # spent elsewhere meanwhile (another relay on the file)
            reset = self.budgets.state(grant.key, grant.policy)[1]
            out.update(_exhausted_headers(grant.policy, reset))
            raise

    def _report(self, grant: Grant | None, out: dict[str, str], audit: RequestAudit) -> None:
        """After the grant is released: what is left, in headers and in the audit."""
        if grant is None or self.budgets is None:
            return
        left, reset = self.budgets.state(grant.key, grant.policy)
        out.update(headers(grant.policy, left, reset))
        audit.extra["row_budget_remaining"] = left

    def _release(self, grant: Grant | None) -> None:
        if grant is not None and self.budgets is not None:
            self.budgets.release(grant)

    # --- rows as an entity sees them -------------------------------------------------------

    def _rows(self, view: EntityView, snap: Snapshot) -> tuple[pa.Table, Any, str | None]:
        """(table, key index, key column): source order for an entity exposing its key,
        else its columns in its own keyed order (``assay.relay.order``), built once per
        snapshot. Blocking on a first use: call it where the scan runs."""
        if view.key is not None:
            return snap.data, snap.index, view.table.primary_key
        name = (view.dataset.id, view.entity.name)
        cached = self._ordered.get(name)
        if cached is None or cached[0] != snap.digest:
            key = order.order_key(self._order_key, *name, snap.digest)
            columns = list(dict.fromkeys(f.column for f in view.fields))
            cached = (snap.digest, order.reorder(snap.data, columns, key))
            self._ordered[name] = cached
        return cached[1], None, None

    # --- answers -------------------------------------------------------------------------

    async def records(
        self,
        view: EntityView,
        args: Sequence[tuple[str, str]],
        audit: RequestAudit,
        who: str,
        out: dict[str, str],
    ) -> tuple[dict[str, Any], dict[str, Any], Snapshot | LiveTag]:
        """A page; ``who`` (auth mode and id) binds cursors and budgets, ``out`` gets the
        budget headers (also when refused)."""
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
        # 1. Reserve before the snapshot: a spent budget touches no data. A page is
        #    clamped to what is left, so the budget is never exceeded and all of it usable.
        grant = self._reserve(self._budget(view, who), plan.limit, out)
        try:
            live = self.store.pool(view.dataset.id, view.table.id)
            # The one snapshot this request sees; a live table names itself instead.
            snap: Snapshot | LiveTag = live.tag if live is not None else self.snapshot(view)
            normalized = plan.normalized()
            bound = cursor.binding(view.dataset.id, e.name, normalized, snap.digest, who)
            offset = (
                0 if plan.cursor is None else cursor.decode(self._cursor_key, bound, plan.cursor)
            )
            audit.extra["cursor"] = plan.cursor is not None
            limit = plan.limit if grant is None else grant.rows

            def run() -> query.Page:
                assert isinstance(snap, Snapshot)
                table, index, key_column = self._rows(view, snap)
                return query.page(
                    table,
                    plan.conditions,
                    plan.fields,
                    offset=offset,
                    limit=limit,
                    index=index,
                    key_column=key_column,
                )

            started = time.perf_counter()
            if live is not None:
                result = await live.page(plan.conditions, plan.fields, offset=offset, limit=limit)
            elif snap.rows > THREAD_ROWS:  # type: ignore[union-attr]
                result = await trio.to_thread.run_sync(run)
            else:
                result = run()
            self._scanned("records", started)
            audit.extra["row_count"] = len(result.records)
            # 2. Spend what is returned, and at least one row, durably, before it leaves:
            #    an empty page is an answer about the records its filters name.
            await self._spend(grant, charge(len(result.records)), out)
        finally:
            self._release(grant)
        self._report(grant, out, audit)
        body = {
            "dataset": view.dataset.id,
            "entity": e.name,
            "snapshot": self.published(view, snap),
            "count": len(result.records),
            "records": result.records,
            "next_cursor": None
            if result.next_offset is None
            else cursor.encode(self._cursor_key, bound, result.next_offset),
        }
        return body, {**normalized, "offset": offset}, snap

    async def record(
        self,
        view: EntityView,
        raw_id: str,
        args: Sequence[tuple[str, str]],
        audit: RequestAudit,
        who: str,
        out: dict[str, str],
    ) -> tuple[dict[str, Any], dict[str, Any], Snapshot | LiveTag]:
        """The records query ``key=raw_id`` plus the caller's filters, at most one row.

        1. Only where the key is exposed and ``eq``-filterable (``EntityView.lookup``).
        2. The entity's other required filters must be given, as on a records query; a
           record that exists but does not match them is ``record.not_found``, like one
           that does not exist.
        """
        e = view.entity
        key = view.key
        if key is None or not view.lookup:
            raise lookup_refused()
        if any(k in planner.RESERVED for k, _ in args):
            raise BadRequest("a record lookup takes only filters", code="request.invalid")
        try:
            value = planner.parse_value(raw_id, key.type, self.bounds)
        except BadRequest:
            raise BadRequest(
                f"record id is not a valid {key.type}", code="record.id_invalid"
            ) from None
        others = planner.parse_conditions(
            args,
            fields=view.by_name,
            allowed=view.allowed,
            required=[r for r in e.required_filters if r != key.name],
            bounds=self.bounds,
        )
        if any(c.field == key.name for c in others):
            raise BadRequest(
                f"field {key.name!r} is the record id; it is not filtered again",
                code="entity.filter_duplicate",
                reasons=[f"duplicate filter {key.name}"],
            )
        by_id = Condition(key.name, key.column, key.type, "eq", (value,), key.sensitive)
        conditions = tuple(sorted((*others, by_id), key=lambda c: (c.field, c.op)))
        audit.extra.update(planner.audit_extra(conditions, self.redactor))
        grant = self._reserve(self._budget(view, who), 1, out)
        try:
            live = self.store.pool(view.dataset.id, view.table.id)
            started = time.perf_counter()
            snap: Snapshot | LiveTag
            if live is not None:
                snap = live.tag
                page = await live.page(conditions, view.fields, offset=0, limit=1)
            else:
                snap = self.snapshot(view)
                page = query.page(
                    snap.data,
                    conditions,
                    view.fields,
                    offset=0,
                    limit=1,
                    index=snap.index,
                    key_column=view.table.primary_key,
                )
            self._scanned("record", started)
            audit.extra["row_count"] = len(page.records)
            # A miss costs its row too: "no such record under these filters" is the
            # record's status (closed or not) when the id is known.
            await self._spend(grant, charge(len(page.records)), out)
        finally:
            self._release(grant)
        self._report(grant, out, audit)
        if not page.records:
            raise NotFound("no such record", code="record.not_found")
        body = {
            "dataset": view.dataset.id,
            "entity": e.name,
            "snapshot": self.published(view, snap),
            "record": page.records[0],
        }
        query_doc = {
            "id": planner.canonical(value),
            "filters": [[c.field, c.op, [planner.canonical(v) for v in c.values]] for c in others],
            "fields": [f.name for f in view.fields],
        }
        return body, query_doc, snap

    async def aggregate(
        self,
        ds: Dataset,
        agg: Aggregate,
        view: EntityView,
        args: Sequence[tuple[str, str]],
        audit: RequestAudit,
        who: str,
        out: dict[str, str],
    ) -> tuple[dict[str, Any], dict[str, Any], Snapshot]:
        """Published groups count against the source entity's row budget, as rows: with
        a small ``min_group_size`` a cell is a row, so aggregates are no way around it."""
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
        budget = self._budget(view, who)
        # 1. A spent budget touches no data (an empty reservation is a look, not a spend).
        self._release(self._reserve(budget, 1, out))
        snap = self.snapshot(view)

        def run() -> disclosure.AggregateAnswer:
            mask = query.mask_for(snap.data, conditions)
            return disclosure.aggregate(snap.data, mask, agg, view.by_name)

        started = time.perf_counter()
        answer = await trio.to_thread.run_sync(run) if snap.rows > THREAD_ROWS else run()
        self._scanned("aggregate", started)
        audit.extra["row_count"] = len(answer.groups)
        audit.extra["suppressed_groups"] = answer.suppressed_groups
        # 2. All of the groups or none: an aggregate is not clamped (part of it would
        #    mislead). Then spent durably before they leave.
        cost = charge(len(answer.groups))
        grant = self._reserve(budget, cost, out, whole=True)
        try:
            await self._spend(grant, cost, out)
        finally:
            self._release(grant)
        self._report(grant, out, audit)
        dc = agg.disclosure_control
        body = {
            "dataset": ds.id,
            "aggregate": agg.id,
            "snapshot": self.published(view, snap),
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
        answer: dict[str, Any], request_id: str,
    ) -> str:  # fmt: skip
        """A JWS of the answer; its ``jti`` is fresh (128 random bits), never the caller's."""
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
            answer_id=secrets.token_urlsafe(16),
            request_id=request_id,
        )
        return jws.sign(self.signing_key, signing.key_id, claims)
