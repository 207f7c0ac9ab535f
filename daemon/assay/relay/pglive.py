"""Live reads of a Postgres table: a bounded pool of read-only sessions, one page a query.

Why live at all: some tables are too large or change too often to snapshot. A live
table keeps no snapshot; each page is one generated statement (``pgsource.live_page_sql``:
declared columns, declared filters as bound parameters, key order, ``LIMIT``/``OFFSET``)
run in a session from ``pgread.open_session`` (read-only, ``statement_timeout``).

Bounds: at most ``live_max_connections`` sessions, each used by one request at a time;
waiting for one is bounded by ``connect_timeout`` (then 503, never a queue without end);
a page may not reach past ``live_max_rows`` matching rows (offset plus limit); the rows
are typed by the declared schema through the same Arrow projection the snapshot path
uses, so a live answer has the snapshot answer's shape. A session that failed is closed,
never reused; an idle session the server dropped is replaced once, transparently.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import pyarrow as pa
import trio
from psycopg import errors as pgerrors

from assay.core.errors import BadRequest
from assay.relay import pgsource, query
from assay.relay.config import Table
from assay.relay.decode import ARROW_TYPES, SourceInvalid
from assay.relay.errors import SourceUnavailable
from assay.relay.pgread import PgBinding, check_types, open_session, session, translate
from assay.relay.planner import Condition, FieldSpec

Conn = psycopg.Connection[tuple[Any, ...]]


@dataclass(frozen=True)
class LiveTag:
    """What a live answer names in place of a snapshot digest (cursors bind to it)."""

    digest: str


def check_live(binding: PgBinding, spec: Table, where: str) -> None:
    """Blocking, at startup: the server answers a read-only session and the declared
    columns exist with lossless types, or the relay does not start."""
    with session(binding, where) as conn:
        check_types(conn, spec, where, live=True)


class LivePool:
    """At most ``live_max_connections`` read-only sessions of one live table."""

    def __init__(self, binding: PgBinding, spec: Table, where: str) -> None:
        self.binding = binding
        self.spec = spec
        self.where = where
        self.source = binding.source
        self.tag = LiveTag("live:sha256:" + hashlib.sha256(binding.locator.encode()).hexdigest())
        self._slots = trio.CapacityLimiter(self.source.live_max_connections)
        self._idle: list[Conn] = []
        self.failures = 0
        self.last_error: str | None = None

    async def page(
        self,
        conditions: Sequence[Condition],
        fields: Sequence[FieldSpec],
        *,
        offset: int,
        limit: int,
    ) -> query.Page:
        """One page in key order.

        1. Refuse a page past ``live_max_rows`` before any session is taken.
        2. Take a slot, waiting at most ``connect_timeout`` (getting a session is bounded).
        3. Run the generated statement in a worker thread on an idle or new session.
        4. Type the rows by the declared schema and project them like a snapshot page.
        """
        if offset + limit > self.source.live_max_rows:  # 1.
            raise BadRequest(
                f"a live page may not reach past row {self.source.live_max_rows}; narrow "
                "the filters",
                code="entity.live_rows_exceeded",
            )
        columns = list(dict.fromkeys(f.column for f in fields))
        stmt, params = pgsource.live_page_sql(
            self.source, columns, conditions, self.spec.primary_key, offset=offset, limit=limit
        )
        acquired = False
        with trio.move_on_after(self.source.connect_timeout):  # 2.
            await self._slots.acquire()
            acquired = True
        if not acquired:
            raise SourceUnavailable(
                f"{self.where}: every live connection is busy "
                f"(live_max_connections={self.source.live_max_connections})"
            )
        try:
            idle = self._idle.pop() if self._idle else None
            try:
                conn, rows = await trio.to_thread.run_sync(self._run, idle, stmt, params)  # 3.
            except SourceUnavailable as exc:
                self.failures += 1
                self.last_error = exc.detail
                raise
            self.last_error = None
            self._idle.append(conn)
        finally:
            self._slots.release()
        records = self._project(rows, columns, fields)  # 4.
        more = len(records) > limit
        return query.Page(records[:limit], offset + limit if more else None)

    def _run(self, conn: Conn | None, stmt: Any, params: list[Any]) -> tuple[Conn, list[Any]]:
        """Blocking: the statement on ``conn`` (if still good) or on a new session."""
        reused = conn is not None and not conn.closed and not conn.broken
        if conn is not None and not reused:
            conn.close()
        attempt = conn if reused else None
        for _ in range(2):
            session_conn = attempt or open_session(self.binding, self.where)
            try:
                rows = session_conn.execute(stmt, params).fetchall()
                session_conn.rollback()  # end the read-only transaction: idle, not in one
            except psycopg.OperationalError as exc:
                lost = session_conn.broken and not isinstance(exc, pgerrors.QueryCanceled)
                session_conn.close()
                if attempt is not None and lost:  # an idle session the server dropped
                    attempt = None
                    continue
                raise translate(exc, self.binding, self.where) from None
            except psycopg.Error as exc:
                session_conn.close()
                raise translate(exc, self.binding, self.where) from None
            return session_conn, rows
        raise SourceUnavailable(f"{self.where}: postgres source unavailable")  # pragma: no cover

    def _project(
        self, rows: list[Any], columns: list[str], fields: Sequence[FieldSpec]
    ) -> list[dict[str, Any]]:
        types = {c.name: c.type for c in self.spec.columns}
        arrays = []
        for i, name in enumerate(columns):
            values = [row[i] for row in rows]
            if types[name] == "number" and any(
                v is not None and not math.isfinite(v) for v in values
            ):
                raise SourceInvalid(f"{self.where}: column {name!r} has non-finite numbers")
            try:
                arrays.append(pa.array(values, type=ARROW_TYPES[types[name]]))
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                raise SourceInvalid(
                    f"{self.where}: column {name!r} does not fit {types[name]}"
                ) from None
        return query.project(pa.table(arrays, names=columns), fields)

    def close(self) -> None:
        """Blocking: close every idle session."""
        while self._idle:
            self._idle.pop().close()
