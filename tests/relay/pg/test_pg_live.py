"""Live Postgres tables against a real server: the same answers as a snapshot, values that
cannot inject, timeouts and busy pools answered with typed errors, bounded pages."""

from __future__ import annotations

import string
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assay.core.errors import AssayError, BadRequest
from assay.relay.pglive import LivePool
from assay.relay.planner import Bounds, FieldSpec, parse_conditions
from assay.relay.settings import load_config, load_secrets, table_states
from tests.relay.conftest import RelayEnv, all_text, build_env, start
from tests.relay.pg.conftest import dsn_file, owner, to_postgres
from tests.relay.pg.pgserver import PgServer

RECORDS = "/v1/datasets/civil/entities/household/records"
WAIT_SECONDS = 30.0


def live_env(tmp_path: Path, pg: PgServer, **options: Any) -> RelayEnv:
    """The example relay with civil.households answered live (its aggregate dropped:
    aggregates need a snapshot)."""
    env = build_env(tmp_path)
    to_postgres(env, "households", dsn_file(env, pg.dsn("relay_ro")), mode="live", **options)
    civil = env.doc["datasets"][0]
    civil["aggregates"] = [a for a in civil["aggregates"] if a["source_entity"] != "case"]
    env.write()
    return env


async def _all_pages(client: Any, env: RelayEnv, query: str) -> tuple[list[Any], int]:
    """Every record of a query, following cursors (bounded)."""
    out: list[Any] = []
    url = f"{RECORDS}?{query}&limit=50" if query else f"{RECORDS}?limit=50"
    for pages in range(1, 100):
        r = await client.get(url, headers=env.headers("all"))
        body = await r.get_json()
        assert r.status_code == 200, body
        out.extend(body["records"])
        if body["next_cursor"] is None:
            return out, pages
        url = f"{RECORDS}?{query}&limit=50&cursor={body['next_cursor']}"
    pytest.fail("more pages than the table has rows")


QUERIES = [
    "", "status=active", "municipality.in=M01,M03", "size.between=2,4",
    "size.gte=3&status.in=active,suspended", "id=H0000007", "municipality=nowhere",
]  # fmt: skip


async def test_live_pages_answer_what_the_snapshot_answers(
    tmp_path: Path, pg: PgServer, example_tables: None
) -> None:
    """Differential: live pages (generated SQL, key order, cursors) hold the same records
    as the file snapshot of the same rows, query by query; lookups by id too."""
    file_env, env = build_env(tmp_path / "file"), live_env(tmp_path / "live", pg)
    (fparts, _), (lparts, audit) = start(file_env), start(env)
    assert lparts.store.pool("civil", "households") is not None
    async with fparts.app.test_app() as fa, lparts.app.test_app() as la:
        fc, lc = fa.test_client(), la.test_client()
        for query in QUERIES:
            want, _ = await _all_pages(fc, file_env, query)
            got, _ = await _all_pages(lc, env, query)
            assert sorted(got, key=lambda r: r["id"]) == sorted(want, key=lambda r: r["id"])
            assert [r["id"] for r in got] == sorted(r["id"] for r in got)  # key order
        r = await lc.get(f"{RECORDS}/H0000003", headers=env.headers("all"))
        body = await r.get_json()
        pool = lparts.store.pool("civil", "households")
        assert pool is not None and pool.tag.digest.startswith("live:sha256:")
        # Callers see the keyed tag of the live table (the audit keeps the bare name).
        assert r.status_code == 200
        assert body["snapshot"] == lparts.store.tag("civil", "households", pool.tag)
        want_one = await (await fc.get(f"{RECORDS}/H0000003", headers=file_env.headers("all"))
                          ).get_json()  # fmt: skip
        assert body["record"] == want_one["record"]
        missing = await lc.get(f"{RECORDS}/H9999999", headers=env.headers("all"))
        assert missing.status_code == 404
    assert audit.records[-1]["extra"]["row_count"] == 0
    named = [
        r["extra"] for r in audit.records if r["extra"].get("snapshot_tag") == body["snapshot"]
    ]
    assert named and all(x["snapshot"] == pool.tag.digest for x in named)
    lparts.close()


def _households(env: RelayEnv) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = pq.read_table(env.data / "households.parquet").to_pylist()
    return rows


_NASTY = st.sampled_from([
    "'", "''", '"', "\\", "%s", "%(x)s", "'; DROP TABLE households; --",
    "active' OR '1'='1", "M01'--", "$$", "E'\\x00'", "{}", "active",
])  # fmt: skip
_VALUE = st.one_of(
    _NASTY,
    st.sampled_from(["active", "suspended", "closed", "M01", "M02", "M05"]),
    st.text(st.sampled_from(string.printable.strip() + "äß€'\""), min_size=1, max_size=30),
).filter(lambda v: "," not in v)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(field=st.sampled_from(["status", "municipality"]), op=st.sampled_from(["eq", "in"]),
       values=st.lists(_VALUE, min_size=1, max_size=4))  # fmt: skip
def test_filter_values_with_quotes_cannot_inject_into_live_sql(
    live_pool: tuple[LivePool, RelayEnv], field: str, op: str, values: list[str]
) -> None:
    """Whatever the caller's values, the live answer is exactly the reference filter over
    the same rows: a value is only ever compared, never read as SQL."""
    pool, env = live_pool
    raw = ",".join(values) if op == "in" else values[0]
    specs = {f: FieldSpec(f, f, "string") for f in ("status", "municipality")}
    try:
        conds = parse_conditions([(f"{field}.{op}" if op == "in" else field, raw)], fields=specs,
                                 allowed={f: frozenset({"eq", "in"}) for f in specs},
                                 required=(), bounds=Bounds())  # fmt: skip
    except BadRequest:
        return  # refused before any SQL (control characters): nothing to compare
    fields = [FieldSpec("id", "household_id", "string"), FieldSpec(field, field, "string")]
    page = trio.run(lambda: pool.page(conds, fields, offset=0, limit=1000))
    wanted = set(conds[0].values)
    want = sorted(h["household_id"] for h in _households(env) if h[field] in wanted)
    assert [r["id"] for r in page.records] == want
    assert page.next_offset is None


@pytest.fixture
def live_pool(tmp_path: Path, pg: PgServer, example_tables: None) -> Any:
    env = live_env(tmp_path, pg, live_max_rows=100_000)
    loaded = load_config(env.config_path)
    state = next(s for s in table_states(loaded, load_secrets(loaded).pg)
                 if s.where == "civil.households")  # fmt: skip
    assert state.pg is not None
    pool = LivePool(state.pg, state.spec, state.where)
    yield pool, env
    pool.close()
    with owner(pg) as conn:  # and the table is whole
        row = conn.execute("SELECT count(*) FROM households").fetchone()
    assert row is not None and row[0] == len(_households(env))


def _waiting(pg: PgServer, n: int) -> bool:
    with pg.connect("postgres") as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'assay-relay' "
            "AND wait_event_type = 'Lock'"
        ).fetchone()
    return bool(row and row[0] >= n)


async def _until(predicate: Any, what: str) -> None:
    with trio.move_on_after(WAIT_SECONDS):
        while not predicate():  # noqa: ASYNC110 - a database state has no trio.Event
            await trio.sleep(0.02)
        return
    pytest.fail(f"timed out waiting for {what}")


async def test_a_live_query_over_query_timeout_answers_504_source_timeout(
    tmp_path: Path, pg: PgServer, example_tables: None
) -> None:
    env = live_env(tmp_path, pg, query_timeout=0.3)
    parts, audit = start(env)
    async with parts.app.test_app() as app:
        client = app.test_client()
        with owner(pg) as lock:
            lock.autocommit = False
            lock.execute("LOCK TABLE households IN ACCESS EXCLUSIVE MODE")
            r = await client.get(f"{RECORDS}?status=active", headers=env.headers("all"))
            lock.rollback()
        body = await r.get_json()
        assert r.status_code == 504 and body["code"] == "relay.source_timeout", body
        assert r.headers["content-type"] == "application/problem+json"
        ok = await client.get(f"{RECORDS}?status=active", headers=env.headers("all"))
        assert ok.status_code == 200  # the failed session was dropped; a new one answers
    assert audit.records[-2]["error_code"] == "relay.source_timeout"
    for secret in pg.passwords.values():
        assert secret not in str(body) and secret not in all_text(audit.records)
    parts.close()


async def test_every_live_connection_busy_answers_503_within_connect_timeout(
    tmp_path: Path, pg: PgServer, example_tables: None
) -> None:
    """live_max_connections bounds the sessions: with the one session stuck on a lock, the
    next request waits at most connect_timeout for it, then is refused, typed."""
    env = live_env(tmp_path, pg, live_max_connections=1, connect_timeout=1)
    parts, _ = start(env)
    results: dict[str, Any] = {}
    async with parts.app.test_app() as app:
        client = app.test_client()

        async def ask(name: str) -> None:
            r = await client.get(f"{RECORDS}?status=active", headers=env.headers("all"))
            results[name] = (r.status_code, await r.get_json())

        with owner(pg) as lock:
            lock.autocommit = False
            lock.execute("LOCK TABLE households IN ACCESS EXCLUSIVE MODE")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask, "first")
                await _until(lambda: _waiting(pg, 1), "the first session to block")
                await ask("second")
                assert not _waiting(pg, 2)  # no second session was opened
                lock.rollback()
    assert results["second"][0] == 503
    assert results["second"][1]["code"] == "relay.source_unavailable"
    assert "live_max_connections=1" in results["second"][1]["detail"]
    assert results["first"][0] == 200
    parts.close()


async def test_a_live_page_past_live_max_rows_is_refused_before_any_sql(
    tmp_path: Path, pg: PgServer, example_tables: None
) -> None:
    env = live_env(tmp_path, pg, live_max_rows=60)
    parts, _ = start(env)
    async with parts.app.test_app() as app:
        client = app.test_client()
        first = await client.get(f"{RECORDS}?limit=50", headers=env.headers("all"))
        cursor = (await first.get_json())["next_cursor"]
        r = await client.get(f"{RECORDS}?limit=50&cursor={cursor}", headers=env.headers("all"))
        body = await r.get_json()
    assert first.status_code == 200
    assert r.status_code == 400 and body["code"] == "entity.live_rows_exceeded"
    parts.close()


async def test_a_reload_of_a_live_table_copies_nothing(
    tmp_path: Path, pg: PgServer, example_tables: None
) -> None:
    """SIGHUP reloads every table: a live one must not be snapshotted whole by it."""
    env = live_env(tmp_path, pg)
    parts, _ = start(env)
    state = next(s for s in parts.store.tables() if s.where == "civil.households")
    await parts.store.reload_all()
    assert state.snapshot is None and state.pool is not None
    assert parts.store.status()["civil.households"]["ok"]
    parts.close()


async def test_an_idle_session_the_server_dropped_is_replaced_once_and_a_timeout_is_not(
    tmp_path: Path, pg: PgServer, example_tables: None
) -> None:
    env = live_env(tmp_path, pg, query_timeout=0.3)
    parts, _ = start(env)
    async with parts.app.test_app() as app:
        client = app.test_client()
        first = await client.get(f"{RECORDS}?status=active", headers=env.headers("all"))
        assert first.status_code == 200  # its session now idles in the pool
        with pg.connect("postgres") as admin:
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE application_name = 'assay-relay'")  # fmt: skip
        again = await client.get(f"{RECORDS}?status=active", headers=env.headers("all"))
        assert again.status_code == 200
        assert (await again.get_json())["records"] == (await first.get_json())["records"]
        with owner(pg) as lock:  # a timeout on a pooled session is answered, not retried
            lock.autocommit = False
            lock.execute("LOCK TABLE households IN ACCESS EXCLUSIVE MODE")
            r = await client.get(f"{RECORDS}?status=active", headers=env.headers("all"))
            lock.rollback()
        assert r.status_code == 504
    pool = parts.store.pool("civil", "households")
    assert pool is not None and pool.failures == 1
    parts.close()


def test_a_key_that_aggregates_and_reads_a_live_table_is_refused_at_startup(
    tmp_path: Path, pg: PgServer, example_tables: None
) -> None:
    """A live table keeps no rows, so whether it is an aggregate's population cannot be
    judged by content: a key that may ask civil's aggregate and read housing's live
    households fails the startup (closed), where two files would be compared."""
    env = build_env(tmp_path)
    to_postgres(env, "households", dsn_file(env, pg.dsn("relay_ro")), dataset=1, mode="live")
    stats = next(k for k in env.doc["auth"]["api_keys"] if k["id"] == "stats")
    stats["scopes"] += ["housing:metadata", "housing:read"]
    env.write()
    with pytest.raises(AssayError, match="a live table whose rows cannot be compared") as info:
        start(env)
    assert "key 'stats' may ask the aggregate civil.people_by_municipality" in info.value.detail
