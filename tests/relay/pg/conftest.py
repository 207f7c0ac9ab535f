"""Postgres fixtures: one real server per session, the example registry loaded into it.

``pg`` starts the server (``pgserver``) once; ``example_tables`` copies the synthetic
registry that ``build_env`` writes (same generator, same seed) into Postgres tables owned
by ``fixture_owner`` and readable by ``relay_ro``; ``pg_env`` is a relay env whose civil
tables read those tables instead of the files, with the relay role's DSN in a 0600 file.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from psycopg import sql

from tests.relay.conftest import RelayEnv, build_env
from tests.relay.pg.pgserver import PgServer, pg_server

PG_TYPES = {
    "string": "text",
    "integer": "bigint",
    "number": "double precision",
    "boolean": "boolean",
    "date": "date",
    "timestamp": "timestamptz",
}
CIVIL_TABLES = ("people", "households")


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    with pg_server() as server:
        yield server


def create_table(
    server: PgServer, name: str, columns: list[dict[str, Any]], rows: list[tuple[Any, ...]],
    *, primary_key: str,
) -> None:  # fmt: skip
    """A table owned by the fixture role, readable by the relay role, holding ``rows``."""
    cols = sql.SQL(", ").join(
        sql.SQL("{} {}{}").format(
            sql.Identifier(c["name"]),
            sql.SQL(c.get("pg_type") or PG_TYPES[c["type"]]),
            sql.SQL(" PRIMARY KEY" if c["name"] == primary_key else ""),
        )
        for c in columns
    )
    with server.connect() as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(name), cols))
        names = sql.SQL(", ").join(sql.Identifier(c["name"]) for c in columns)
        stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(name), names)
        with conn.cursor() as cur, cur.copy(stmt) as copy:
            for row in rows:
                copy.write_row(row)


def arrow_rows(table: pa.Table) -> list[tuple[Any, ...]]:
    columns = [table.column(n).to_pylist() for n in table.column_names]
    return list(zip(*columns, strict=True))


def civil_schema(env: RelayEnv, table_id: str) -> dict[str, Any]:
    civil = env.doc["datasets"][0]
    found: dict[str, Any] = next(t for t in civil["tables"] if t["id"] == table_id)
    return found


@pytest.fixture(scope="session")
def example_tables(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The example registry (build_env's generator and seed) as Postgres tables."""
    env = build_env(tmp_path_factory.mktemp("pg-example"))
    for table_id in CIVIL_TABLES:
        spec = civil_schema(env, table_id)
        data = pq.read_table(env.data / f"{table_id}.parquet")
        create_table(pg, table_id, spec["schema"], arrow_rows(data),
                     primary_key=spec["primary_key"])  # fmt: skip


def dsn_file(env: RelayEnv, dsn: str, name: str = "pg.dsn") -> Path:
    path = env.dir / "secrets" / name
    path.write_text(dsn)
    path.chmod(0o600)
    return path


def to_postgres(
    env: RelayEnv, table_id: str, dsn: Path, *, dataset: int = 0, **pg_options: Any
) -> dict[str, Any]:
    """Point one table of ``env`` at Postgres (same id as the table name by default)."""
    spec: dict[str, Any] = next(
        t for t in env.doc["datasets"][dataset]["tables"] if t["id"] == table_id
    )
    options = {"dsn": {"file": str(dsn)}, "table": table_id, **pg_options}
    spec["source"] = {"postgres": options}
    spec.setdefault("refresh", {})
    spec["refresh"] = {"mode": "manual"} if "change_token_sql" not in options else spec["refresh"]
    return spec


@pytest.fixture
def pg_env(tmp_path: Path, pg: PgServer, example_tables: None) -> RelayEnv:
    """The example relay with civil's people and households read from Postgres."""
    env = build_env(tmp_path)
    dsn = dsn_file(env, pg.dsn("relay_ro"))
    for table_id in CIVIL_TABLES:
        to_postgres(env, table_id, dsn)
    env.write()
    return env


def unique(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(4)}"


def owner(pg: PgServer) -> psycopg.Connection[tuple[Any, ...]]:
    return pg.connect("fixture_owner")
