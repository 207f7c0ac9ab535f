"""Postgres I/O: read-only sessions, the COPY snapshot, the change token. Blocking.

Why one session factory: every connection the relay opens, for a snapshot, a change
token or a live page, comes from ``open_session``, which makes the session read-only
(``SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY``) and then checks that it is
(``default_transaction_read_only`` and ``transaction_read_only`` both ``on``), sets the
``statement_timeout`` to the source's ``query_timeout``, and UTC and ISO output so that
the COPY text decodes as the CSV path expects. A role with write grants still cannot
write through it: the server refuses (``ReadOnlySqlTransaction``).

The operator's SQL (``query``, ``change_token_sql``) runs only as a prepared statement
inside a subquery: the server's parser admits exactly one query, so no text in it can end
the read-only transaction and start another.

Errors are translated once, here, into the relay's typed families, with the DSN and its
password scrubbed and quoted values dropped; they name the secret ref, never its value.
Every function blocks: callers run them through ``trio.to_thread``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql

from assay.core.errors import AssayError
from assay.relay import pgsource
from assay.relay.config import Table
from assay.relay.decode import SourceInvalid
from assay.relay.errors import SourceTimeout, SourceUnavailable
from assay.relay.pgsource import PostgresSource


@dataclass(frozen=True)
class PgBinding:
    """A Postgres source with its DSN read from its secret ref (kept out of ``repr``)."""

    source: PostgresSource
    dsn: str
    params: dict[str, str]
    locator: str

    def __repr__(self) -> str:
        return f"PgBinding({self.locator!r}, dsn from {self.source.dsn.describe()})"

    @property
    def ref(self) -> str:
        return self.source.dsn.describe()


def bind(source: PostgresSource, dsn: str) -> PgBinding:
    """Check the DSN's policy (refusing, naming only the ref) and keep it with its source."""
    params = pgsource.check_dsn(dsn, source.dsn)
    return PgBinding(source, dsn, params, pgsource.locator(params, source))


def translate(exc: psycopg.Error, binding: PgBinding, where: str) -> AssayError:
    """One psycopg error as the relay's typed error, without the DSN or a data value."""
    msg = pgsource.scrub_secret(str(exc), binding.dsn, binding.params)
    state = f" [{exc.sqlstate}]" if exc.sqlstate else ""
    detail = f"{where}: postgres source ({binding.ref}){state}: {msg}"
    if isinstance(exc, pgerrors.QueryCanceled):
        return SourceTimeout(detail)
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return SourceUnavailable(detail)
    return SourceInvalid(detail, path=where)


_SETUP = sql.SQL(
    "SELECT set_config('statement_timeout', %s, false), set_config('TimeZone', 'UTC', false),"
    " set_config('DateStyle', 'ISO, YMD', false), set_config('extra_float_digits', '1', false),"
    " current_setting('default_transaction_read_only'), current_setting('transaction_read_only')"
)


def open_session(binding: PgBinding, where: str) -> psycopg.Connection[tuple[Any, ...]]:
    """A new read-only session (the relay's only session factory), or a typed error.

    1. Connect with the source's ``connect_timeout`` (libpq enforces it, TLS per DSN).
    2. ``SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY``: every later transaction
       of this session is read-only, whatever the role may do.
    3. statement_timeout, UTC, ISO dates, shortest exact floats; then check that
       ``default_transaction_read_only`` and ``transaction_read_only`` are ``on``.
    4. From here every unit of work is an explicit ``BEGIN ISOLATION LEVEL REPEATABLE
       READ READ ONLY`` transaction that is rolled back: a statement that changes the
       session default (``set_config('default_transaction_read_only', 'off')``) cannot
       make a later transaction writable, and the change itself is rolled back. One
       snapshot read (token, types, COPY) sees one database snapshot.
    """
    src = binding.source
    try:
        conn = psycopg.connect(  # 1.
            binding.dsn,
            connect_timeout=src.connect_timeout,
            autocommit=True,
            application_name="assay-relay",
            client_encoding="UTF8",
        )
    except psycopg.Error as exc:
        raise translate(exc, binding, where) from None
    try:
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")  # 2.
        ms = str(max(1, round(src.query_timeout * 1000)))
        row = conn.execute(_SETUP, [ms]).fetchone()  # 3.
        if row is None or row[4] != "on" or row[5] != "on":
            raise SourceUnavailable(f"{where}: postgres session did not become read-only")
        conn.autocommit = False  # 4.
        conn.read_only = True
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    except psycopg.Error as exc:
        conn.close()
        raise translate(exc, binding, where) from None
    except BaseException:
        conn.close()
        raise
    return conn


@contextmanager
def session(binding: PgBinding, where: str) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    conn = open_session(binding, where)
    try:
        yield conn
        conn.rollback()  # read-only: nothing to keep, and any setting it changed is undone
    except psycopg.Error as exc:
        raise translate(exc, binding, where) from None
    finally:
        conn.close()


def check_types(
    conn: psycopg.Connection[tuple[Any, ...]], spec: Table, where: str, *, live: bool = False
) -> None:
    """The declared columns exist with lossless types (like Parquet's check). Live, a
    number must be ``float8``: a ``float4`` compared with a bound float8 would not equal
    the value its snapshot text gives."""
    src = spec.source.postgres
    assert src is not None
    names = [c.name for c in spec.columns]
    # Prepared: the server parses it as exactly one statement, so a declared query that
    # closes its parenthesis and appends statements (COMMIT; SET ... READ WRITE; DELETE)
    # is refused here, before the COPY that wraps the same text runs.
    cur = conn.execute(pgsource.describe_sql(src, names), prepare=True)
    oids = [d.type_code for d in cur.description or ()]
    found = conn.execute(
        "SELECT oid::int8, typname::text FROM pg_catalog.pg_type WHERE oid = ANY(%s)", [oids]
    ).fetchall()
    typname = {int(oid): str(name) for oid, name in found}
    actual = {d.name: typname.get(int(d.type_code), "?") for d in cur.description or ()}
    problems = pgsource.type_problems(actual, {c.name: c.type for c in spec.columns}, live=live)
    if problems:
        raise SourceInvalid(f"{where}: " + "; ".join(problems) + "; refusing a lossy or "
                            "guessed conversion", path=where)  # fmt: skip


@dataclass(frozen=True)
class PgRead:
    """One snapshot read: the COPY bytes, the token read before them, what was read."""

    data: bytes
    token: str | None
    locator: str


def server_locator(conn: psycopg.Connection[tuple[Any, ...]], source: PostgresSource) -> str:
    """What the server says the source is: its address, port and database, and for a
    table the relation's OID (so ``households`` and ``public.households`` are one)."""
    row = conn.execute(
        "SELECT current_database()::text, coalesce(host(inet_server_addr()), 'local'),"
        " inet_server_port()"
    ).fetchone()
    assert row is not None
    base = f"postgres://{row[1]}:{row[2]}/{row[0]}"
    if source.table is None:
        return f"{base}/query:{pgsource.sql_digest(source.query or '')}"
    name = sql.Identifier(*source.relation()).as_string(conn)
    oid = conn.execute("SELECT %s::regclass::oid::int8", [name]).fetchone()
    assert oid is not None
    return f"{base}/oid:{oid[0]}"


def read_snapshot(binding: PgBinding, spec: Table, max_bytes: int, where: str) -> PgRead:
    """The declared columns as COPY CSV, and the change token read just before it (so a
    change after the token is seen by the next poll). Bounded: over ``max_bytes`` the
    COPY is cancelled and the load refused before the rest is read."""
    names = [c.name for c in spec.columns]
    chunks: list[bytes] = []
    total = 0
    with session(binding, where) as conn:
        token = _token(conn, binding, where) if binding.source.change_token_sql else None
        check_types(conn, spec, where)
        locator = server_locator(conn, binding.source)
        with (
            conn.cursor() as cur,
            cur.copy(pgsource.copy_sql(binding.source, names, spec.primary_key)) as copy,
        ):
            for chunk in copy:
                total += len(chunk)
                if total > max_bytes:
                    raise SourceInvalid(
                        f"{where}: source is over the cap of {max_bytes} bytes", path=where
                    )
                chunks.append(bytes(chunk))
    return PgRead(b"".join(chunks), token, locator)


def change_token(binding: PgBinding, where: str) -> str:
    """The value of ``change_token_sql`` in a session of its own."""
    with session(binding, where) as conn:
        return _token(conn, binding, where)


def _token(conn: psycopg.Connection[tuple[Any, ...]], binding: PgBinding, where: str) -> str:
    """The value of ``change_token_sql`` (one row, one column) as bounded text."""
    token_sql = binding.source.change_token_sql
    assert token_sql is not None
    wrapped = sql.SQL("SELECT * FROM ({}) AS token").format(sql.SQL(token_sql))  # a query only
    rows = conn.execute(wrapped, prepare=True).fetchmany(2)  # prepared: one statement only
    if len(rows) != 1 or len(rows[0]) != 1:
        raise SourceInvalid(f"{where}: change_token_sql must return one row and one column")
    text = repr(rows[0][0])
    if len(text) > pgsource.MAX_TOKEN_CHARS:
        text = "sha256:" + hashlib.sha256(text.encode()).hexdigest()
    return text
