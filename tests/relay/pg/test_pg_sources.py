"""Postgres snapshots against a real server: load, strict types, caps, read-only sessions,
statement timeouts, change-token refresh, the server going away, and disclosure rules
answering exactly as over the same data in files."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import psycopg
import pyarrow.parquet as pq
import pytest
import trio
from psycopg import errors as pgerrors

from assay.core.errors import AssayError
from assay.relay.decode import SourceInvalid, decode
from assay.relay.errors import SourceTimeout, SourceUnavailable
from assay.relay.pgread import bind, open_session, read_snapshot
from assay.relay.settings import load_config, load_secrets, table_states
from assay.relay.snapshot import TableState
from tests.relay.conftest import RelayEnv, all_text, build_env, start
from tests.relay.pg.conftest import arrow_rows, create_table, dsn_file, owner, to_postgres, unique
from tests.relay.pg.pgserver import PgServer, self_signed_tls

WAIT_SECONDS = 30.0


def _state(env: RelayEnv, table_id: str) -> TableState:
    loaded = load_config(env.config_path)
    secrets = load_secrets(loaded)
    states = {s.spec.id: s for s in table_states(loaded, secrets.pg) if s.dataset == "civil"}
    return states[table_id]


def test_snapshot_by_copy_holds_the_same_typed_rows_as_the_parquet_file(pg_env: RelayEnv) -> None:
    parts, _ = start(pg_env)
    for table_id in ("people", "households"):
        snap = parts.store.get("civil", table_id)
        spec = next(s.spec for s in parts.store.tables() if s.spec.id == table_id)
        from_file = decode(
            (pg_env.data / f"{table_id}.parquet").read_bytes(),
            spec.model_copy(update={"source": spec.source.model_copy(
                update={"postgres": None, "path": f"{table_id}.parquet"})}),
            where="file",
        )  # fmt: skip
        assert snap.rows == from_file.num_rows > 0
        assert snap.data.sort_by(spec.primary_key).equals(from_file.sort_by(spec.primary_key))
        assert snap.locator is not None
        assert snap.locator.startswith("postgres://127.0.0.1:") and "/registry/oid:" in snap.locator
        assert snap.identity().file is None  # a database source is no file


AGG = "/v1/datasets/civil/aggregates/people_by_municipality"
CASES = "/v1/datasets/civil/aggregates/cases_by_status"


async def test_aggregates_over_postgres_answer_exactly_as_over_the_same_files(
    tmp_path: Path, pg_env: RelayEnv
) -> None:
    """Differential: the suppression (k, omit), totals and every published cell are the
    same whether the population came from Parquet/CSV or from COPY; only the snapshot
    digest (what was read) differs."""
    file_env = build_env(tmp_path / "file")
    (file_parts, _), (pg_parts, _) = start(file_env), start(pg_env)
    munis = sorted(set(pg_parts.store.get("civil", "people").data.column("municipality")
                       .to_pylist()))  # fmt: skip
    queries = ["", *(f"?municipality={m}" for m in munis),
               f"?municipality.in={','.join(munis[:3])}"]  # fmt: skip
    async with file_parts.app.test_app() as fa, pg_parts.app.test_app() as pa_:
        fc, pc = fa.test_client(), pa_.test_client()
        compared = 0
        for path in (AGG, CASES):
            for q in queries if path == AGG else [""]:
                key = "case_stats" if path == CASES else "agg"
                fr = await fc.get(path + q, headers=file_env.headers(key))
                pr = await pc.get(path + q, headers=pg_env.headers(key))
                fb, pb = await fr.get_json(), await pr.get_json()
                assert fr.status_code == pr.status_code == 200, (fb, pb)
                assert fb.pop("snapshot") != pb.pop("snapshot")
                assert fb == pb
                compared += 1
                if q == "" and path == AGG:
                    assert pb["suppressed_groups"] > 0  # small cells exist and stay hidden
    assert compared == len(queries) + 1


def test_two_groupings_of_one_postgres_relation_are_refused_at_startup(
    pg: PgServer, example_tables: None, tmp_path: Path
) -> None:
    """One grouping per population holds over Postgres: a second aggregated table over
    the same relation (another spelling of the source) fails the startup."""
    env = build_env(tmp_path)
    dsn = dsn_file(env, pg.dsn("relay_ro"))
    to_postgres(env, "households", dsn)
    civil = env.doc["datasets"][0]
    twin = {**next(t for t in civil["tables"] if t["id"] == "households"), "id": "households2"}
    twin["source"] = {"postgres": {"dsn": {"file": str(dsn)}, "table": "public.households"}}
    civil["tables"].append(twin)
    civil["entities"].append({"name": "case2", "table": "households2",
                              "fields": [{"name": "status"}]})  # fmt: skip
    civil["aggregates"].append({
        "id": "cases2", "source_entity": "case2", "dimensions": ["status"],
        "indicators": [{"id": "n", "function": "count"}],
        "disclosure_control": {"min_group_size": 5},
    })  # fmt: skip
    env.write()
    with pytest.raises(AssayError, match="two groupings of one population"):
        start(env)


def test_an_aggregated_postgres_query_over_most_of_an_aggregated_relation_is_refused(
    pg: PgServer, example_tables: None, tmp_path: Path
) -> None:
    """The population estimate works over COPY snapshots too: a declared query that drops
    one household is another relation (its locator), other bytes and another identifier
    set, so only the rows (``population.row_overlap``) show it is the same population."""
    env = build_env(tmp_path)
    dsn = dsn_file(env, pg.dsn("relay_ro"))
    to_postgres(env, "households", dsn)
    civil = env.doc["datasets"][0]
    twin = {**next(t for t in civil["tables"] if t["id"] == "households"), "id": "households2"}
    subset = "SELECT * FROM households WHERE household_id <> 'H0000001'"
    twin["source"] = {"postgres": {"dsn": {"file": str(dsn)}, "query": subset}}
    civil["tables"].append(twin)
    civil["entities"].append({"name": "case2", "table": "households2",
                              "fields": [{"name": "status"}]})  # fmt: skip
    civil["aggregates"].append({
        "id": "cases2", "source_entity": "case2", "dimensions": ["status"],
        "indicators": [{"id": "n", "function": "count"}],
        "disclosure_control": {"min_group_size": 5},
    })  # fmt: skip
    env.write()
    with pytest.raises(AssayError, match="largely the same rows") as info:
        start(env)
    assert "two groupings of one population" in info.value.detail


def test_aggregated_postgres_snapshots_carry_a_population_fingerprint(pg_env: RelayEnv) -> None:
    parts, _ = start(pg_env)
    people = parts.store.get("civil", "people")
    assert people.fingerprint is not None and people.locator is not None
    ident = people.identity()
    assert ident.file is None and ident.locator == people.locator
    assert ident.identifiers == people.fingerprint.identifiers
    parts.close()


def test_a_column_type_that_is_not_a_lossless_fit_is_refused(pg: PgServer, tmp_path: Path) -> None:
    name = unique("typed")
    cols = [
        {"name": "id", "type": "integer"},
        {"name": "amount", "type": "number", "pg_type": "numeric"},
        {"name": "seen", "type": "timestamp", "pg_type": "timestamp"},
    ]
    create_table(pg, name, cols, [(1, 1.5, "2024-01-01 00:00:00")], primary_key="id")
    env = build_env(tmp_path)
    dsn = dsn_file(env, pg.dsn("relay_ro"))
    env.doc["datasets"][0]["tables"].append({
        "id": "typed", "primary_key": "id", "refresh": {"mode": "manual"},
        "source": {"postgres": {"dsn": {"file": str(dsn)}, "table": name}},
        "schema": [{"name": c["name"], "type": c["type"]} for c in cols],
    })  # fmt: skip
    env.write()
    with pytest.raises(SourceInvalid) as info:
        start(env)
    assert "'amount' is numeric, declared number" in info.value.detail
    assert "'seen' is timestamp, declared timestamp" in info.value.detail


def test_a_source_over_max_source_bytes_is_refused_while_reading(pg_env: RelayEnv) -> None:
    state = _state(pg_env, "people")
    assert state.pg is not None
    with pytest.raises(SourceInvalid, match="over the cap of 1000 bytes"):
        read_snapshot(state.pg, state.spec, 1000, state.where)


@pytest.mark.parametrize("role", ["fixture_owner", "relay_ro"])
def test_a_write_through_the_relays_session_is_refused_by_the_server(
    pg: PgServer, example_tables: None, pg_env: RelayEnv, role: str
) -> None:
    """Even a role that may write (the owner) cannot through the relay's session factory:
    the session is read-only, and the server says so."""
    state = _state(pg_env, "households")
    assert state.pg is not None
    binding = bind(state.pg.source, pg.dsn(role))
    conn = open_session(binding, "civil.households")
    try:
        assert conn.execute("SHOW default_transaction_read_only").fetchone() == ("on",)
        for stmt in (
            "INSERT INTO households (household_id, municipality, size, status) "
            "VALUES ('x', 'M01', 1, 'active')",
            "UPDATE households SET size = 0",
            "DELETE FROM households",
            "CREATE TABLE relay_wrote (x int)",
        ):
            with pytest.raises(pgerrors.ReadOnlySqlTransaction):
                conn.execute(stmt)
            conn.rollback()
    finally:
        conn.close()
    with owner(pg) as conn:
        assert conn.execute("SELECT count(*) FROM households WHERE household_id = 'x'"
                            ).fetchone() == (0,)  # fmt: skip


def test_a_statement_over_query_timeout_is_cancelled_with_a_typed_error(
    pg: PgServer, pg_env: RelayEnv
) -> None:
    state = _state(pg_env, "households")
    assert state.pg is not None
    slow = state.pg.source.model_copy(update={
        "table": None, "query_timeout": 0.2,
        "query": "SELECT h.* FROM households h, pg_sleep(5)",
    })  # fmt: skip
    binding = bind(slow, pg.dsn("relay_ro"))
    with pytest.raises(SourceTimeout) as info:
        read_snapshot(binding, state.spec, 10**8, state.where)
    assert info.value.code == "relay.source_timeout" and info.value.status == 504
    assert "57014" in info.value.detail  # query_canceled
    assert pg.passwords["relay_ro"] not in info.value.detail


def _token_env(pg: PgServer, tmp_path: Path) -> tuple[RelayEnv, str]:
    """households copied to a table of this test's own, refreshed by a change token."""
    name = unique("hh")
    env = build_env(tmp_path)
    spec = next(t for t in env.doc["datasets"][0]["tables"] if t["id"] == "households")
    data = pq.read_table(env.data / "households.parquet")
    create_table(pg, name, spec["schema"], arrow_rows(data), primary_key="household_id")
    with owner(pg) as conn:
        conn.execute(f"CREATE TABLE {name}_version (v int NOT NULL)")
        conn.execute(f"INSERT INTO {name}_version VALUES (1)")
        conn.execute(f"GRANT SELECT ON {name}_version TO relay_ro")
    to_postgres(env, "households", dsn_file(env, pg.dsn("relay_ro")), table=name,
                change_token_sql=f"SELECT v FROM {name}_version")  # fmt: skip
    spec["refresh"] = {"mode": "mtime", "interval_seconds": 0.05}
    env.write()
    return env, name


async def _until(predicate: Any, what: str) -> None:
    with trio.move_on_after(WAIT_SECONDS):
        while not predicate():  # noqa: ASYNC110 - a database state has no trio.Event
            await trio.sleep(0.02)
        return
    pytest.fail(f"timed out waiting for {what}")


async def test_refresh_follows_the_change_token_and_only_it(pg: PgServer, tmp_path: Path) -> None:
    env, name = _token_env(pg, tmp_path)
    parts, _ = start(env)
    store = parts.store
    state = next(s for s in store.tables() if s.where == "civil.households")
    first = store.get("civil", "households")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.watch, state)
        # 1. The data moves but the token does not: no reload (the token is the signal).
        with owner(pg) as conn:
            conn.execute(f"UPDATE {name} SET size = size + 1 WHERE household_id = "
                         f"(SELECT min(household_id) FROM {name})")  # fmt: skip
        polls = state.failures
        await trio.sleep(0.3)
        assert store.get("civil", "households") is first and state.failures == polls
        # 2. The token moves: the new rows are swapped in.
        with owner(pg) as conn:
            conn.execute(f"UPDATE {name}_version SET v = 2")
        await _until(lambda: store.get("civil", "households") is not first, "the reload")
        nursery.cancel_scope.cancel()
    second = store.get("civil", "households")
    assert second.digest != first.digest and second.token == "2"
    assert sum(second.data.column("size").to_pylist()) == sum(
        first.data.column("size").to_pylist()) + 1  # fmt: skip


def _relay_backend_waiting(pg: PgServer) -> bool:
    with pg.connect("postgres") as conn:  # only a superuser sees others' wait events
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'assay-relay' "
            "AND wait_event_type = 'Lock'"
        ).fetchone()
    return bool(row and row[0])


async def test_the_server_dropping_the_session_mid_refresh_keeps_the_old_snapshot(
    pg: PgServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The COPY is under way (blocked on a lock the owner holds) when the server ends the
    relay's session: the reload fails, the old snapshot keeps serving, /readyz says stale
    and why, and nothing says the password."""
    env, name = _token_env(pg, tmp_path)
    parts, audit = start(env)
    store = parts.store
    state = next(s for s in store.tables() if s.where == "civil.households")
    old = store.get("civil", "households")
    results: list[bool] = []
    caplog.set_level(logging.INFO)
    with owner(pg) as lock:
        lock.autocommit = False
        lock.execute(f"LOCK TABLE {name} IN ACCESS EXCLUSIVE MODE")
        async with trio.open_nursery() as nursery:

            async def reload() -> None:
                results.append(await store.reload(state))

            nursery.start_soon(reload)
            await _until(lambda: _relay_backend_waiting(pg), "the relay's COPY to block")
            with pg.connect("postgres") as killer:
                killer.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                               "WHERE application_name = 'assay-relay'")  # fmt: skip
        lock.rollback()
    assert results == [False]
    assert store.get("civil", "households") is old
    status = store.status()["civil.households"]
    old_tag = store.tag("civil", "households", old)
    assert status["stale"] and status["ok"] and status["snapshot"] == old_tag
    assert "relay.source" not in status["last_error"]  # the reason, not a code
    assert "postgres source (file " in status["last_error"]
    async with parts.app.test_app() as app:
        ready = await (
            await app.test_client().get("/readyz", headers=env.headers("all"))
        ).get_json()  # details: civil's metadata scope
        r = await app.test_client().get("/v1/datasets/civil/entities/household/records",
                                        headers=env.headers("all"))  # fmt: skip
        assert r.status_code == 200 and (await r.get_json())["snapshot"] == old_tag
    assert "civil.households" in ready["checks"]["tables"]["stale"]
    _no_password(pg, caplog.text, all_text(audit.records), str(status), str(ready))


async def test_the_server_stopped_keeps_the_old_snapshot_until_it_answers_again(
    pg: PgServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env, name = _token_env(pg, tmp_path)
    parts, audit = start(env)
    store = parts.store
    state = next(s for s in store.tables() if s.where == "civil.households")
    old = store.get("civil", "households")
    caplog.set_level(logging.INFO)
    pg.stop()
    try:
        assert await store.reload(state) is False
        assert store.get("civil", "households") is old
        assert store.status()["civil.households"]["stale"]
        with pytest.raises(SourceUnavailable):
            await trio.to_thread.run_sync(read_snapshot, state.pg, state.spec, 10**8, "x")
    finally:
        pg.start()
    with owner(pg) as conn:
        conn.execute(f"UPDATE {name}_version SET v = 3")
    assert await store.reload(state) is False  # same rows: nothing swapped, but fresh
    assert not store.status()["civil.households"]["stale"]
    assert store.get("civil", "households").token == "3"
    _no_password(pg, caplog.text, all_text(audit.records))


def _no_password(pg: PgServer, *texts: str) -> None:
    for secret in pg.passwords.values():
        for text in texts:
            assert secret not in text


def test_a_wrong_password_is_reported_without_any_password(
    pg: PgServer, pg_env: RelayEnv, caplog: pytest.LogCaptureFixture
) -> None:
    state = _state(pg_env, "households")
    assert state.pg is not None
    wrong = pg.dsn("relay_ro").replace(pg.passwords["relay_ro"], "not-the-password-123")
    with pytest.raises(SourceUnavailable) as info:
        read_snapshot(bind(state.pg.source, wrong), state.spec, 10**8, state.where)
    assert "file " in info.value.detail and "password authentication failed" in info.value.detail
    assert "not-the-password-123" not in info.value.detail
    assert "not-the-password-123" not in repr(bind(state.pg.source, wrong))
    with pytest.raises(psycopg.OperationalError):  # the server itself refuses plain TCP
        psycopg.connect(pg.dsn("relay_ro", sslmode="disable"), connect_timeout=5)


def test_an_unreachable_server_fails_the_startup_closed(tmp_path: Path) -> None:
    env = build_env(tmp_path)
    to_postgres(env, "households", dsn_file(
        env, "host=127.0.0.1 port=1 dbname=r user=u password=pw-xyz-123 sslmode=require"),
        connect_timeout=2)  # fmt: skip
    env.write()
    with pytest.raises(SourceUnavailable) as info:
        start(env)
    assert "pw-xyz-123" not in info.value.detail


_ESCAPE = (
    "SELECT 1 AS x) AS q; COMMIT; SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE; "
    "COMMIT; DELETE FROM {t}; SELECT * FROM (SELECT 1 AS x"
)


@pytest.mark.parametrize("where", ["query", "change_token_sql"])
def test_declared_sql_that_appends_statements_cannot_leave_the_read_only_session(
    pg: PgServer, tmp_path: Path, where: str
) -> None:
    """Even the operator's own SQL runs as one prepared query: text that closes its
    parenthesis, commits, turns the session read-write and deletes is refused by the
    server's parser, and the table is whole afterwards."""
    env, name = _token_env(pg, tmp_path)
    state = _state(env, "households")
    assert state.pg is not None
    evil = _ESCAPE.format(t=name)
    update: dict[str, Any] = (
        {"table": None, "query": evil} if where == "query" else {"change_token_sql": evil}
    )
    binding = bind(state.pg.source.model_copy(update=update), pg.dsn("fixture_owner"))
    with pytest.raises(SourceInvalid, match="42601"):  # syntax_error: multiple commands
        read_snapshot(binding, state.spec, 10**8, state.where)
    with owner(pg) as conn:
        row = conn.execute(f"SELECT count(*) FROM {name}").fetchone()
    assert row is not None and row[0] > 0


def test_declared_sql_that_turns_the_session_read_write_still_cannot_write(
    pg: PgServer, tmp_path: Path
) -> None:
    """One statement may still call ``set_config('default_transaction_read_only', 'off')``
    (the change token, run first) and the next a function that deletes (the query): every
    transaction the relay opens is itself ``BEGIN READ ONLY``, so a session default changed
    in between does not matter."""
    env, name = _token_env(pg, tmp_path)
    with owner(pg) as conn:
        conn.execute(f"CREATE FUNCTION {name}_wipe() RETURNS bigint LANGUAGE sql VOLATILE AS "
                     f"$$ DELETE FROM {name} RETURNING 1; SELECT 1::bigint $$")  # fmt: skip
    state = _state(env, "households")
    assert state.pg is not None
    update = {
        "table": None,
        "change_token_sql": "SELECT set_config('default_transaction_read_only', 'off', false)",
        "query": f"SELECT h.*, {name}_wipe() AS b FROM {name} h",
    }
    binding = bind(state.pg.source.model_copy(update=update), pg.dsn("fixture_owner"))
    with pytest.raises(SourceInvalid, match="25006"):  # read_only_sql_transaction
        read_snapshot(binding, state.spec, 10**8, state.where)
    with owner(pg) as conn:
        row = conn.execute(f"SELECT count(*) FROM {name}").fetchone()
    assert row is not None and row[0] > 0


def test_the_same_rows_in_another_heap_order_give_the_same_snapshot_digest(
    pg: PgServer, tmp_path: Path
) -> None:
    """An UPDATE that changes nothing visible still moves rows in the heap; the snapshot's
    bytes (key order) and digest do not move, so cursors and keyed orders stay valid."""
    env, name = _token_env(pg, tmp_path)
    state = _state(env, "households")
    assert state.pg is not None
    before = read_snapshot(state.pg, state.spec, 10**8, state.where).data
    with owner(pg) as conn:
        first5 = f"SELECT household_id FROM {name} ORDER BY household_id LIMIT 5"
        conn.execute(f"UPDATE {name} SET size = size WHERE household_id IN ({first5})")
        heap = conn.execute(f"SELECT household_id FROM {name}").fetchall()
    assert heap != sorted(heap)  # the heap order did move
    assert read_snapshot(state.pg, state.spec, 10**8, state.where).data == before


def test_verify_full_accepts_the_servers_certificate_and_refuses_another_root(
    pg: PgServer, pg_env: RelayEnv, tmp_path: Path
) -> None:
    """The sessions really are TLS: verify-full against the server's own certificate
    connects (and the server reports TLS), against another root it is refused."""
    state = _state(pg_env, "households")
    assert state.pg is not None
    good = bind(state.pg.source, pg.dsn("relay_ro", sslmode="verify-full",
                                        sslrootcert=str(pg.dir / "server.crt")))  # fmt: skip
    conn = open_session(good, state.where)
    try:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row == (True,)
    finally:
        conn.close()
    other = tmp_path / "other"
    other.mkdir()
    wrong_root, _ = self_signed_tls(other)  # a fresh, unrelated self-signed root
    bad = bind(state.pg.source, pg.dsn("relay_ro", sslmode="verify-full",
                                       sslrootcert=str(wrong_root)))  # fmt: skip
    with pytest.raises(SourceUnavailable, match="certificate verify failed"):
        open_session(bad, state.where)
