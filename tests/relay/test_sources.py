"""Sources: strict types, no silent coercion, size caps, read-only, atomic refresh."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import trio
import trio.lowlevel
from hypothesis import given, settings
from hypothesis import strategies as st

from assay.relay.config import Table
from assay.relay.decode import SourceInvalid, decode
from assay.relay.snapshot import SnapshotStore, TableState, failure_reason, snapshot_tagger
from tests.relay.conftest import Running, build_env, source_state, start


def _table(fmt: str = "csv", **extra: Any) -> Table:
    return Table.model_validate(
        {
            "id": "t",
            "source": {"path": f"t.{fmt}"},
            "primary_key": "id",
            "schema": [
                {"name": "id", "type": "integer", "nullable": False},
                {"name": "name", "type": "string"},
                {"name": "born", "type": "date"},
                {"name": "seen", "type": "timestamp"},
                {"name": "score", "type": "number"},
                {"name": "ok", "type": "boolean"},
            ],
            **extra,
        }
    )


GOOD = (
    b"id,name,born,seen,score,ok\n"
    b"1,Ada,1990-01-02,2024-01-02T03:04:05Z,1.5,true\n"
    b"2,,1991-02-03,2024-01-02T03:04:05+02:00,,false\n"
)


def test_well_typed_csv_loads_with_declared_types() -> None:
    t = decode(GOOD, _table(), where="d.t")
    assert t.schema.field("id").type == pa.int64()
    assert t.schema.field("seen").type == pa.timestamp("us", tz="UTC")
    assert t.column("name").to_pylist() == ["Ada", None]


@pytest.mark.parametrize(
    ("row", "secret"),
    [
        (b"3,Bo,1990-01-02,2024-01-02T03:04:05Z,1.5,SECRETVAL\n", "SECRETVAL"),
        (b"SECRETVAL,Bo,1990-01-02,2024-01-02T03:04:05Z,1.5,true\n", "SECRETVAL"),
        (b"3,Bo,02/01/1990,2024-01-02T03:04:05Z,1.5,true\n", "02/01/1990"),
        (b"3,Bo,1990-01-02,2024-01-02T03:04:05,1.5,true\n", "2024-01-02T03:04:05"),
        (b"3,Bo,1990-01-02,2024-01-02T03:04:05Z,1.5,yes\n", "yes"),
    ],
    ids=["bool-word", "text-in-integer", "local-date", "naive-timestamp", "yes-for-true"],
)
def test_value_that_does_not_fit_fails_the_load_without_quoting_it(row: bytes, secret: str) -> None:
    with pytest.raises(SourceInvalid) as info:
        decode(GOOD + row, _table(), where="civil.t")
    assert "civil.t" in info.value.detail
    assert secret not in info.value.detail


SECRET = "Zq7SECRETx"
#: Pieces of a CSV row: the secret in every position and spelling a row may hold it.
_PIECES = st.sampled_from(
    [SECRET, f'"{SECRET}', f'{SECRET}"', f'"{SECRET},{SECRET}"', f"1{SECRET}", "3", "",
     "1990-01-02", "2024-01-02T03:04:05Z", f"2024-01-02T03:04:05{SECRET}", "1.5", "true",
     "\xff" + SECRET, "\r", '"', ",", ";"]
)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(st.lists(_PIECES, min_size=1, max_size=9), min_size=1, max_size=3),
    at=st.integers(0, 2),
    header=st.booleans(),
)
def test_no_malformed_csv_puts_a_byte_of_its_rows_in_the_reason(
    rows: list[list[str]], at: int, header: bool
) -> None:
    """Rows with too many or too few fields, open quotes, bad UTF-8, values of the wrong
    type, with or without a header: decode loads or refuses, and the refusal, which
    reaches the log and /readyz, holds no part of the data (pyarrow's text quotes the
    row unquoted, so scrubbing its quoted values was not enough)."""
    lines = GOOD.decode().splitlines()
    bad = [",".join(r) for r in rows]
    body = lines[1 : at + 1] + bad + lines[at + 1 :]
    data = "\n".join(([lines[0]] if header else []) + body) + "\n"
    try:
        decode(data.encode("utf-8", "surrogateescape"), _table(), where="civil.t")
    except SourceInvalid as exc:
        assert "SECRET" not in exc.detail and "Zq7" not in exc.detail, exc.detail
        assert exc.detail.startswith("civil.t: ")


@settings(max_examples=150, deadline=None)
@given(cut=st.integers(0, 4000), flip=st.integers(0, 4000), byte=st.integers(0, 255))
def test_no_damaged_parquet_puts_its_bytes_in_the_reason(cut: int, flip: int, byte: int) -> None:
    """A Parquet file holding the secret, truncated or with one byte changed anywhere."""
    names = pa.array([SECRET * 3, None])
    data = bytearray(_parquet(_pq_good(name=names)))
    if flip < len(data):
        data[flip] = byte
    damaged = bytes(data[: max(1, len(data) - cut)])
    try:
        decode(damaged, _table("parquet"), where="civil.t")
    except SourceInvalid as exc:
        assert "SECRET" not in exc.detail and "Zq7" not in exc.detail, exc.detail


def test_a_lossy_parquet_cast_never_names_the_value() -> None:
    """pyarrow's cast error names the value it would lose, unquoted (``1532015191753713``
    for a nanosecond timestamp): the reason names the column and type only."""
    ns = pa.array([1532015191753713123, None], pa.timestamp("ns", tz="UTC"))
    big = pa.array([1, 18446744073709551557], pa.uint64())
    for override in ({"seen": ns}, {"id": big}):
        with pytest.raises(SourceInvalid) as info:
            decode(_parquet(_pq_good(**override)), _table("parquet"), where="civil.t")
        assert "does not fit" in info.value.detail
        assert not any(ch.isdigit() for ch in info.value.detail.removeprefix("civil.t"))


def test_undeclared_columns_are_named_by_position_not_by_what_the_header_says() -> None:
    """A header line is whatever the file's first line holds: an export that glued a
    data row onto it (or a file without one) has values there."""
    data = GOOD.replace(b"ok\n", f"ok,{SECRET}\n".encode(), 1)
    data = data.replace(b"true\n", b"true,x\n").replace(b"false\n", b"false,y\n")
    with pytest.raises(SourceInvalid) as info:
        decode(data, _table(), where="civil.t")
    assert "positions [7]" in info.value.detail and SECRET not in info.value.detail


def test_null_in_non_nullable_column_fails() -> None:
    data = GOOD.replace(b"\n1,Ada", b"\n,Ada")
    with pytest.raises(SourceInvalid, match="null"):
        decode(data, _table(), where="d.t")


def test_duplicate_primary_key_fails() -> None:
    with pytest.raises(SourceInvalid, match="duplicate"):
        decode(GOOD + b"2,Dup,1990-01-02,2024-01-02T03:04:05Z,1,true\n", _table(), where="d.t")


def test_missing_declared_column_fails() -> None:
    data = b"id,name,born,seen,ok\n1,Ada,1990-01-02,2024-01-02T03:04:05Z,true\n"
    with pytest.raises(SourceInvalid, match="missing declared columns"):
        decode(data, _table(), where="d.t")


def test_undeclared_column_fails_unless_ignored_and_then_never_served() -> None:
    data = GOOD.replace(b"ok\n", b"ok,secret_note\n").replace(b"true\n", b"true,x\n")
    data = data.replace(b"false\n", b"false,y\n")
    with pytest.raises(SourceInvalid, match="undeclared"):
        decode(data, _table(), where="d.t")
    t = decode(data, _table(ignore_extra_columns=True), where="d.t")
    assert "secret_note" not in t.column_names


def test_non_finite_number_fails() -> None:
    with pytest.raises(SourceInvalid, match="non-finite"):
        decode(GOOD + b"3,Bo,1990-01-02,2024-01-02T03:04:05Z,inf,true\n", _table(), where="d.t")


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


def _pq_good(**override: pa.Array) -> pa.Table:
    cols = {
        "id": pa.array([1, 2], pa.int32()),
        "name": pa.array(["a", None]),
        "born": pa.array([None, None], pa.date32()),
        "seen": pa.array([None, None], pa.timestamp("ms", tz="Europe/Paris")),
        "score": pa.array([1.0, 2.0]),
        "ok": pa.array([True, False]),
    }
    cols.update(override)
    return pa.table(cols)


def test_parquet_lossless_widening_is_accepted() -> None:
    t = decode(_parquet(_pq_good()), _table("parquet"), where="d.t")
    assert t.schema.field("id").type == pa.int64()


@pytest.mark.parametrize(
    "override",
    [
        {"id": pa.array([1.0, 2.0])},
        {"score": pa.array([1, 2], pa.int64())},
        {"seen": pa.array([None, None], pa.timestamp("ms"))},
        {"ok": pa.array(["true", "false"])},
    ],
    ids=["float-as-integer", "integer-as-number", "naive-timestamp", "text-as-boolean"],
)
def test_parquet_column_of_another_type_is_refused(override: dict[str, pa.Array]) -> None:
    with pytest.raises(SourceInvalid, match="refusing a lossy or guessed conversion"):
        decode(_parquet(_pq_good(**override)), _table("parquet"), where="d.t")


def test_parquet_integer_too_big_for_int64_is_refused() -> None:
    big = pa.array([1, 2**64 - 1], pa.uint64())
    with pytest.raises(SourceInvalid, match="does not fit"):
        decode(_parquet(_pq_good(id=big)), _table("parquet"), where="d.t")


def test_source_over_the_size_cap_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_bytes(GOOD)
    state = TableState("d", _table(), path, max_bytes=len(GOOD) - 1)
    with pytest.raises(SourceInvalid, match="over the cap"):
        SnapshotStore([state]).load_all_blocking()


def test_serving_never_changes_source_bytes_or_mtime(tmp_path: Path) -> None:
    env = build_env(tmp_path)
    sources = sorted(env.data.glob("*"))
    before = {p: source_state(p) for p in sources}
    modes = {p: os.stat(p).st_mode for p in sources}
    parts, _audit = start(env)

    async def traffic() -> None:
        async with parts.app.test_app() as app:
            client = app.test_client()
            for path in (
                "/v1/datasets/civil/entities/household/records?limit=50",
                "/v1/datasets/civil/aggregates/people_by_municipality",
                "/v1/datasets/civil/entities/household/records/H0000001",
            ):
                key = "stats" if "/aggregates/" in path else "all"
                r = await client.get(path, headers=env.headers(key))
                assert r.status_code == 200
            await parts.store.reload_all()

    trio.run(traffic)
    assert {p: source_state(p) for p in sources} == before
    assert {p: os.stat(p).st_mode for p in sources} == modes
    assert not list(env.data.glob("*.lock")) and sorted(env.data.glob("*")) == sources


async def test_failed_reload_keeps_old_snapshot_serving_and_readyz_reports_it(
    running: Running,
) -> None:
    r = await running.get("/v1/datasets/civil/entities/household/records/H0000001")
    digest = (await r.get_json())["snapshot"]
    households = running.env.data / "households.csv"
    households.write_bytes(households.read_bytes() + b"H9999999,M01,notanumber,active,,\n")
    state = next(t for t in running.parts.store.tables() if t.spec.id == "households")
    assert await running.parts.store.reload(state) is False
    r = await running.get("/v1/datasets/civil/entities/household/records/H0000001")
    assert r.status_code == 200 and (await r.get_json())["snapshot"] == digest
    ready = await running.get("/readyz")  # details: civil's metadata scope
    body = await ready.get_json()
    assert ready.status_code == 200
    assert "civil.households" in body["checks"]["tables"]["stale"]
    assert "notanumber" not in str(body)
    anonymous = await (await running.client.get("/readyz")).get_json()
    assert anonymous == {"ready": True, "failing": []}  # stale still serves: ready


async def test_reload_swaps_snapshot_and_old_cursor_is_refused(running: Running) -> None:
    path = "/v1/datasets/civil/entities/household/records?limit=5"
    first = await (await running.get(path)).get_json()
    households = running.env.data / "households.csv"
    lines = households.read_bytes().splitlines(keepends=True)
    households.write_bytes(b"".join(lines[:-1]))  # one household fewer
    state = next(t for t in running.parts.store.tables() if t.spec.id == "households")
    assert await running.parts.store.reload(state) is True
    r = await running.get(path + "&cursor=" + first["next_cursor"])
    assert r.status_code == 400
    assert (await r.get_json())["code"] == "entity.cursor_invalid"


def _tag(running: Running, state: TableState) -> str:
    """The name callers see for the table's current snapshot."""
    assert state.snapshot is not None
    return running.parts.store.tag(state.dataset, state.spec.id, state.snapshot)


def _versioned(path: Path, version: str, rows: int = 60_000) -> None:
    """A households CSV whose every row carries ``version`` in its status column."""
    body = "".join(f"H{i:07d},M01,1,{version},,\n" for i in range(rows))
    tmp = path.with_suffix(".tmp")
    tmp.write_text("household_id,municipality,size,status,head_person_id,updated_at\n" + body)
    os.replace(tmp, path)  # writers replace files; the relay never sees half a file


async def test_refresh_under_concurrent_load_never_yields_a_torn_read(running: Running) -> None:
    """Readers and a reloader interleave; every answer is from exactly one snapshot.

    The table is large enough that record pages run in a worker thread, so a swap can
    land while a request is mid-flight; the request must keep the snapshot it took.
    """
    households = running.env.data / "households.csv"
    state = next(t for t in running.parts.store.tables() if t.spec.id == "households")
    _versioned(households, "alpha")
    await running.parts.store.reload(state)
    digests: dict[str, str] = {}
    seen: list[tuple[str, set[str]]] = []

    async def reader() -> None:
        for _ in range(12):
            r = await running.get(
                "/v1/datasets/civil/entities/household/records?status.in=alpha,beta&limit=200"
            )
            body = await r.get_json()
            assert r.status_code == 200, body
            seen.append((body["snapshot"], {rec["status"] for rec in body["records"]}))

    async def reloader() -> None:
        for i in range(6):
            version = "beta" if i % 2 == 0 else "alpha"
            await trio.to_thread.run_sync(_versioned, households, version)
            await running.parts.store.reload(state)
            digests[_tag(running, state)] = version
            await trio.lowlevel.checkpoint()

    digests[_tag(running, state)] = "alpha"
    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(reader)
        nursery.start_soon(reloader)
    assert len(seen) == 48
    for digest, statuses in seen:
        assert statuses == {digests[digest]}, "an answer mixed two snapshots"
    print("distinct snapshots seen:", len({d for d, _ in seen}))


async def test_no_answer_names_a_source_by_its_sha256(running: Running) -> None:
    """The SHA-256 of a source confirms a guess of the whole file: answers, signed claims,
    entity metadata and /readyz's details name a snapshot only by its keyed tag, and the
    audit keeps both, so an auditor can still tie the two together."""
    plain = {
        "sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()
        for p in running.env.data.iterdir()
        if p.suffix in (".csv", ".parquet")
    }
    shown = []
    for path, key in (
        ("/v1/datasets/civil/entities/household/records?limit=2", "all"),
        ("/v1/datasets/civil/entities/household/records/H0000001", "all"),
        ("/v1/datasets/civil/entities/household", "all"),
        ("/v1/datasets/civil/entities", "all"),
        ("/v1/datasets/civil/aggregates/people_by_municipality", "agg"),
        ("/readyz", "all"),
    ):
        for accept in ({}, {"Accept": "application/jose"}):
            r = await running.client.get(path, headers=running.env.headers(key) | accept)
            text = await r.get_data(as_text=True)
            if accept and text.count(".") == 2:
                text = base64.urlsafe_b64decode(text.split(".")[1] + "==").decode()
            shown.append(text)
    assert not [d for d in plain if any(d in t for t in shown)]
    extra = running.audit.records[0]["extra"]
    assert extra["snapshot"] in plain and extra["snapshot_tag"].startswith("snap:")
    assert extra["snapshot_tag"] in shown[0]


def test_snapshot_tags_are_keyed_per_table_and_stable_per_key() -> None:
    tag = snapshot_tagger(b"k" * 32)
    digest = "sha256:" + "0" * 64
    assert tag("civil", "people", digest) == snapshot_tagger(b"k" * 32)("civil", "people", digest)
    assert tag("civil", "people", digest) != snapshot_tagger(b"j" * 32)("civil", "people", digest)
    names = [("civil", "people", digest), ("census", "people", digest),
             ("civil", "citizens", digest), ("civil", "people", "sha256:1")]  # fmt: skip
    assert len({tag(*n) for n in names}) == len(names)


@pytest.mark.parametrize(
    "exc",
    [
        OSError(5, f"I/O error on row {SECRET}"),
        pa.ArrowInvalid(f"CSV parse error: Expected 3 columns, got 4: 2,{SECRET},John,3"),
        pa.ArrowMemoryError(SECRET),
        MemoryError(SECRET),
    ],
)
def test_a_reload_that_fails_outside_the_decoder_logs_a_fixed_reason(exc: Exception) -> None:
    """``SnapshotStore.reload``'s fallback, for what escapes the decoder's own reasons."""
    reason = failure_reason("civil.t", exc)
    assert reason.startswith("civil.t: ") and SECRET not in reason
