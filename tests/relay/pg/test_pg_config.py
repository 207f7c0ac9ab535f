"""Postgres source config and DSN policy: no server needed, refusals name refs only."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from assay.core.errors import ConfigError
from assay.core.schema import SecretRef
from assay.relay.config import Source, parse_config
from assay.relay.errors import DsnRefused
from assay.relay.pgsource import (
    PostgresSource,
    check_dsn,
    live_page_sql,
    type_problems,
    where_sql,
)
from assay.relay.planner import Condition
from assay.relay.settings import load_config, load_secrets
from tests.relay.conftest import build_env
from tests.relay.pg.conftest import dsn_file, to_postgres

REF = SecretRef(env="RELAY_PG_DSN")
PASSWORD = "hunter2-s3cr3t-pw"


@pytest.mark.parametrize(
    "dsn",
    [
        f"host=db.example port=5432 dbname=r user=u password={PASSWORD}",
        f"host=db.example dbname=r user=u password={PASSWORD} sslmode=disable",
        f"host=db.example dbname=r user=u password={PASSWORD} sslmode=allow",
        f"host=db.example dbname=r user=u password={PASSWORD} sslmode=prefer",
        f"postgresql://u:{PASSWORD}@db.example/r",
        f"postgresql://u:{PASSWORD}@db.example/r?sslmode=prefer",
        f"host=/var/run/postgresql dbname=r user=u password={PASSWORD} sslmode=require",
        f"host=db.example,/tmp dbname=r user=u password={PASSWORD} sslmode=verify-full",
        f"dbname=r user=u password={PASSWORD} sslmode=require",  # libpq picks a socket
        f"service=prod password={PASSWORD} host=db.example sslmode=require",
        f"host='db.example password={PASSWORD}",  # unparsable: libpq would quote it
    ],
    ids=["no-sslmode", "disable", "allow", "prefer", "uri-no-sslmode", "uri-prefer",
         "unix-socket", "one-host-a-socket", "no-host", "service-file", "unparsable"],
)  # fmt: skip
def test_dsn_that_does_not_demand_tls_to_a_tcp_host_is_refused_without_its_password(
    dsn: str,
) -> None:
    with pytest.raises(DsnRefused) as info:
        check_dsn(dsn, REF)
    assert "environment variable RELAY_PG_DSN" in info.value.detail
    assert PASSWORD not in info.value.detail and PASSWORD not in str(info.value.problem())


@pytest.mark.parametrize(
    "dsn",
    [
        "host=db.example dbname=r user=u sslmode=require",
        "host=db.example dbname=r user=u sslmode=verify-ca sslrootcert=/etc/ca.pem",
        "postgresql://u@db.example:5433/r?sslmode=verify-full",
        "hostaddr=10.0.0.5 dbname=r user=u sslmode=require",
    ],
)
def test_dsn_that_demands_tls_is_accepted(dsn: str) -> None:
    assert check_dsn(dsn, REF)["sslmode"] in {"require", "verify-ca", "verify-full"}


def test_non_tls_dsn_is_refused_when_the_relay_loads_its_config(tmp_path: Path) -> None:
    env = build_env(tmp_path)
    dsn = dsn_file(env, f"host=127.0.0.1 dbname=r user=u password={PASSWORD} sslmode=prefer")
    to_postgres(env, "households", dsn)
    env.write()
    loaded = load_config(env.config_path)
    with pytest.raises(DsnRefused) as info:
        load_secrets(loaded)
    assert info.value.code == "config.dsn_refused"
    assert "datasets[0].tables[1].source.postgres.dsn" in info.value.detail
    assert str(dsn) in info.value.detail  # names the file it came from...
    assert PASSWORD not in info.value.detail  # ...never what it holds


def _doc(tmp_path: Path) -> dict[str, Any]:
    env = build_env(tmp_path)
    return copy.deepcopy(env.doc)


def _pg(doc: dict[str, Any], table_id: str, **options: Any) -> None:
    spec = next(t for t in doc["datasets"][0]["tables"] if t["id"] == table_id)
    spec["source"] = {"postgres": {"dsn": {"env": "PG"}, **options}}


@pytest.mark.parametrize(
    ("table_id", "options", "refresh", "needle"),
    [
        ("households", {"query": "SELECT 1", "mode": "live"}, "manual", "snapshot only"),
        ("households", {"table": "h", "query": "SELECT 1"}, "manual", "exactly one"),
        ("households", {"table": 'h"; DROP TABLE x; --'}, "manual", "pattern"),
        ("households", {"table": "h"}, "mtime", "change_token_sql"),
        ("households", {"table": "h", "mode": "live", "change_token_sql": "SELECT 1"},
         "manual", "live reads have none"),
        # people is aggregated (people_by_municipality), and resident hides its key.
        ("people", {"table": "p", "mode": "live"}, "manual", "aggregates need a snapshot"),
        ("people", {"table": "p", "mode": "live"}, "manual", "must expose the primary key"),
    ],
    ids=["live-query", "table-and-query", "quoted-identifier", "mtime-without-token",
         "live-with-token", "live-aggregated", "live-hidden-key"],
)  # fmt: skip
def test_unsound_postgres_source_is_refused_by_path(
    tmp_path: Path, table_id: str, options: dict[str, Any], refresh: str, needle: str
) -> None:
    doc = _doc(tmp_path)
    _pg(doc, table_id, **options)
    spec = next(t for t in doc["datasets"][0]["tables"] if t["id"] == table_id)
    spec["refresh"] = {"mode": refresh}
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(doc))
    assert needle in info.value.detail


def test_a_postgres_source_takes_no_path_and_a_file_source_needs_one() -> None:
    with pytest.raises(ValidationError, match="no path"):
        Source.model_validate({"path": "x.csv", "postgres": {"dsn": {"env": "PG"}, "table": "t"}})
    with pytest.raises(ValidationError, match="give a path"):
        Source.model_validate({"format": "csv"})
    assert Source.model_validate({"postgres": {"dsn": {"env": "PG"}, "table": "t"}}
                                 ).resolved_format() == "postgres"  # fmt: skip


def test_every_existing_file_source_config_stays_valid(tmp_path: Path) -> None:
    doc = _doc(tmp_path)
    assert parse_config(yaml.safe_dump(doc)).datasets[0].tables[0].source.postgres is None


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=40)


@given(values=st.lists(_TEXT, min_size=1, max_size=5), op=st.sampled_from(["eq", "in", "gte"]))
def test_caller_values_never_enter_the_generated_sql(values: list[str], op: str) -> None:
    """Whatever a caller sends, the statement text is the one for any other values:
    values travel only as parameters (the server half is in test_pg_live)."""
    src = PostgresSource.model_validate({"dsn": {"env": "PG"}, "table": "s.t"})

    def build(vals: list[str]) -> tuple[str, list[Any]]:
        chosen = tuple(vals) if op == "in" else (vals[0],)
        cond = Condition("f", "col", "string", op, chosen, False)
        stmt, params = live_page_sql(src, ["col", "id"], [cond], "id", offset=0, limit=10)
        return stmt.as_string(None), params

    text, params = build(values)
    assert text == build(["x"] * len(values))[0]
    assert text == (
        'SELECT "col", "id" FROM "s"."t" WHERE "col" '
        + ("= ANY(%s)" if op == "in" else "= %s" if op == "eq" else 'COLLATE "C" >= %s')
        + ' ORDER BY "id" LIMIT %s OFFSET %s'
    )
    assert params == [list(values) if op == "in" else values[0], 11, 0]


def test_string_ranges_compare_in_code_point_order_as_the_snapshot_does() -> None:
    """Arrow compares strings by code point; a live range under the database's locale
    (en_US: 'a' < 'B') would select other rows than the snapshot of the same table."""
    cond = Condition("name", "name", "string", "between", ("A", "b"), False)
    where, params = where_sql([cond])
    assert where.as_string(None) == ' WHERE "name" COLLATE "C" BETWEEN %s AND %s'
    assert params == ["A", "b"]
    num = Condition("n", "n", "integer", "gte", (3,), False)
    assert where_sql([num])[0].as_string(None) == ' WHERE "n" >= %s'


def test_a_float4_column_is_refused_live_but_fits_a_snapshot() -> None:
    """float4 0.1 is not float8 0.1: a live eq would miss the row a snapshot (its text,
    shortest exact) finds."""
    assert type_problems({"x": "float4"}, {"x": "number"}) == []
    assert type_problems({"x": "float4"}, {"x": "number"}, live=True) == [
        "column 'x' is float4, declared number"
    ]
    assert type_problems({"x": "numeric"}, {"x": "number"}) != []
