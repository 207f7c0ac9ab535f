"""Postgres sources: the config model, the DSN policy and the SQL the relay generates.

Why pure and in one place: everything the relay will ever send to a database is decided
here from the config and a request's typed plan, never from a caller's text. Identifiers
(schema, table, columns) come only from the declared config and are composed with
``psycopg.sql.Identifier``; caller values only ever travel as bound parameters. The
declared ``query`` and ``change_token_sql`` are the operator's own SQL, run read-only.

The DSN is a secret (it may hold a password), so it is named by its ``SecretRef`` and
judged by libpq's own conninfo parser (``psycopg.conninfo``, one parser decides): it must
ask for TLS (``sslmode`` require, verify-ca or verify-full) to a TCP host, since libpq
ignores ``sslmode`` on a Unix socket. Messages name the secret ref, never the value.

Pure: composes values; the I/O is in ``pgread`` and ``pglive``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from pydantic import Field, model_validator

from assay.core.schema import SecretRef, Strict
from assay.relay.errors import DsnRefused

#: A declared Postgres identifier: unquoted-safe, so what the config says is what the
#: catalog holds (``Identifier`` quotes it anyway).
PG_IDENT = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
RELATION = rf"^{PG_IDENT}(\.{PG_IDENT})?$"
TLS_MODES: frozenset[str] = frozenset({"require", "verify-ca", "verify-full"})
#: conninfo keys that pull settings from files or services the config does not show.
REFUSED_KEYS: frozenset[str] = frozenset({"service", "servicefile"})
MAX_SQL_CHARS = 16 * 1024
MAX_TOKEN_CHARS = 1024


class PostgresSource(Strict):
    """A table (``table``, snapshot or live) or a declared ``query`` (snapshot only)."""

    dsn: SecretRef
    #: ``table`` or ``schema.table``; exactly one of ``table`` and ``query``.
    table: str | None = Field(default=None, pattern=RELATION)
    #: A declared SELECT, wrapped as ``SELECT <declared columns> FROM (<query>) AS q``.
    query: str | None = Field(default=None, min_length=1, max_length=MAX_SQL_CHARS)
    mode: Literal["snapshot", "live"] = "snapshot"
    #: One row, one column; when its value changes the snapshot is reloaded.
    change_token_sql: str | None = Field(default=None, min_length=1, max_length=MAX_SQL_CHARS)
    connect_timeout: int = Field(default=10, ge=1, le=120)
    #: Seconds; the session's ``statement_timeout`` for every statement the relay runs.
    query_timeout: float = Field(default=30.0, gt=0, le=3600)
    live_max_connections: int = Field(default=4, ge=1, le=64)
    #: Live pages may not reach past this many matching rows (offset plus limit).
    live_max_rows: int = Field(default=10_000, ge=1, le=10_000_000)

    @model_validator(mode="after")
    def _shape(self) -> PostgresSource:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of table or query")
        if self.mode == "live" and self.query is not None:
            raise ValueError("query sources are snapshot only; live needs a table")
        if self.mode == "live" and self.change_token_sql is not None:
            raise ValueError("change_token_sql drives snapshot refresh; live reads have none")
        return self

    def relation(self) -> tuple[str, ...]:
        assert self.table is not None
        return tuple(self.table.split("."))

    def spelling(self) -> str:
        """How the config names this source (for the pure one-grouping check)."""
        what = f"table {self.table}" if self.table else f"query {sql_digest(self.query or '')}"
        return f"postgres {self.dsn.describe()} {what}"


def sql_digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


# --- DSN policy ------------------------------------------------------------------------


def check_dsn(dsn: str, ref: SecretRef) -> dict[str, str]:
    """The parsed conninfo if it asks for TLS to TCP hosts; else a refusal naming ``ref``.

    1. libpq's parser reads it (keywords or URI); unparsable is refused, unquoted.
    2. No ``service``: settings from a service file are not in the config.
    3. ``sslmode`` is given and is require, verify-ca or verify-full.
    4. Every host is a TCP host (a path or ``@abstract`` is a Unix socket, where libpq
       ignores sslmode), and a host or hostaddr is given for every item of the lists
       (else libpq picks a socket: no host at all, or an empty item such as ``host=,a``).
    """
    where = ref.describe()
    try:  # 1.
        params = {k: str(v) for k, v in conninfo_to_dict(dsn).items() if v is not None}
    except psycopg.Error:  # libpq's message may quote the DSN: never repeat it
        raise DsnRefused(f"postgres DSN in {where} is not a valid connection string") from None
    bad = sorted(REFUSED_KEYS & params.keys())
    if bad:  # 2.
        raise DsnRefused(f"postgres DSN in {where} uses {bad[0]}; give every setting inline")
    mode = params.get("sslmode")
    if mode not in TLS_MODES:  # 3.
        raise DsnRefused(
            f"postgres DSN in {where} must set sslmode=require, verify-ca or verify-full "
            f"(it has {'no sslmode' if mode is None else 'sslmode=' + mode})"
        )
    # 4a. Item by item, as libpq pairs them (PQconnectdb: host and hostaddr lists of one
    #     length, or one of them absent): each item needs a TCP host or an address. An
    #     empty host item with no address is the default socket directory, in any list
    #     position, so it is refused like a path.
    hosts = params["host"].split(",") if "host" in params else []
    addrs = params["hostaddr"].split(",") if "hostaddr" in params else []
    if hosts and addrs and len(hosts) != len(addrs):
        raise DsnRefused(f"postgres DSN in {where} has host and hostaddr lists of other lengths")
    if not hosts and not addrs:
        raise DsnRefused(f"postgres DSN in {where} names no host; a TCP host is required")
    for i in range(max(len(hosts), len(addrs))):
        host = hosts[i].strip() if hosts else ""
        addr = addrs[i].strip() if addrs else ""
        if host.startswith(("/", "@")) or not (host or addr):  # 4b.
            raise DsnRefused(
                f"postgres DSN in {where} names a Unix socket (host item {i + 1} is "
                f"{'a path' if host else 'empty'}), where TLS is not used; give a TCP host"
            )
    return params


def locator(params: dict[str, str], source: PostgresSource) -> str:
    """What a source is, without credentials: servers, port, database and relation."""
    hosts = params.get("host") or params.get("hostaddr", "")
    what = source.table if source.table else "query:" + sql_digest(source.query or "")
    port = params.get("port", "5432")
    return f"postgres://{hosts}:{port}/{params.get('dbname', params.get('user', ''))}/{what}"


def scrub_secret(message: str, dsn: str, params: dict[str, str]) -> str:
    """A driver message with the DSN and its password removed, and values unquoted."""
    out = message.splitlines()[0] if message else ""
    for secret in (dsn, params.get("password", "")):
        if secret:
            out = out.replace(secret, "<secret>")
    return re.sub(r'"[^"]*"', '"<value>"', out)[:300]


# --- SQL ---------------------------------------------------------------------------------


def _relation(source: PostgresSource) -> sql.Composable:
    return sql.Identifier(*source.relation())


def _columns(columns: Sequence[str]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(c) for c in columns)


def select_sql(source: PostgresSource, columns: Sequence[str]) -> sql.Composed:
    """The declared columns of the declared table or query, nothing else."""
    if source.query is not None:
        return sql.SQL("SELECT {} FROM ({}) AS q").format(_columns(columns), sql.SQL(source.query))
    return sql.SQL("SELECT {} FROM {}").format(_columns(columns), _relation(source))


def copy_sql(source: PostgresSource, columns: Sequence[str], key: str) -> sql.Composed:
    """COPY of the snapshot as CSV with a header (decoded by the CSV path's parser), in
    key order: the same rows give the same bytes, so the same digest (no spurious reload,
    cursors and keyed row orders stay valid), whatever order the heap holds them in."""
    return sql.SQL("COPY ({} ORDER BY {}) TO STDOUT WITH (FORMAT csv, HEADER true)").format(
        select_sql(source, columns), sql.Identifier(key)
    )


def describe_sql(source: PostgresSource, columns: Sequence[str]) -> sql.Composed:
    """No rows, only the column types: checked against the declared schema."""
    return sql.SQL("SELECT * FROM ({}) AS d LIMIT 0").format(select_sql(source, columns))


_OPS = {"eq": "{} = {}", "gte": "{} >= {}", "lte": "{} <= {}", "in": "{} = ANY({})"}


def where_sql(conditions: Sequence[Any]) -> tuple[sql.Composable, list[Any]]:
    """Conditions (planner ``Condition``) to a WHERE clause over declared columns, with
    every value a placeholder and the values in order beside it. A string range compares
    under ``COLLATE "C"`` (code point order), as the snapshot path's Arrow kernels do,
    not under the database's locale."""
    parts: list[sql.Composable] = []
    params: list[Any] = []
    for cond in conditions:
        col: sql.Composable = sql.Identifier(cond.column)
        if cond.type == "string" and cond.op in ("gte", "lte", "between"):
            col = sql.SQL('{} COLLATE "C"').format(col)
        if cond.op == "between":
            parts.append(sql.SQL("{} BETWEEN {} AND {}").format(
                col, sql.Placeholder(), sql.Placeholder()))  # fmt: skip
            params.extend(cond.values)
        elif cond.op == "in":
            parts.append(sql.SQL(_OPS["in"]).format(col, sql.Placeholder()))
            params.append(list(cond.values))
        else:
            parts.append(sql.SQL(_OPS[cond.op]).format(col, sql.Placeholder()))
            params.append(cond.values[0])
    if not parts:
        return sql.SQL(""), params
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(parts), params


def live_page_sql(
    source: PostgresSource,
    columns: Sequence[str],
    conditions: Sequence[Any],
    key: str,
    *,
    offset: int,
    limit: int,
) -> tuple[sql.Composed, list[Any]]:
    """One page in key order, plus one row to tell whether another page follows."""
    where, params = where_sql(conditions)
    query = sql.SQL("SELECT {} FROM {}{} ORDER BY {} LIMIT {} OFFSET {}").format(
        _columns(columns), _relation(source), where, sql.Identifier(key),
        sql.Placeholder(), sql.Placeholder(),
    )  # fmt: skip
    return query, [*params, limit + 1, offset]


#: Postgres type names (``pg_type.typname``) that fit each declared type losslessly.
PG_TYPES: dict[str, frozenset[str]] = {
    "string": frozenset({"text", "varchar", "bpchar", "name", "citext"}),
    "integer": frozenset({"int2", "int4", "int8"}),
    "number": frozenset({"float4", "float8"}),
    "boolean": frozenset({"bool"}),
    "date": frozenset({"date"}),
    "timestamp": frozenset({"timestamptz"}),
}


def type_problems(
    actual: dict[str, str], declared: dict[str, str], *, live: bool = False
) -> list[str]:
    """Declared columns whose database type is not a lossless fit (like Parquet's check:
    ``numeric`` is not a float, a timestamp without time zone is not a timestamp)."""
    fits = {**PG_TYPES, "number": frozenset({"float8"})} if live else PG_TYPES
    return [
        f"column {name!r} is {actual.get(name, 'missing')}, declared {want}"
        for name, want in declared.items()
        if actual.get(name) not in fits[want]
    ]
