"""Row budgets: no key pages through a whole entity, by any route, race or restart.

The clock is a fake (``Clock``): windows move when a test says so, never by sleeping.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from assay.relay import budget
from assay.relay.budget import Usage
from assay.relay.config import RowBudget
from tests.relay.conftest import RelayEnv, Running, build_env, start

HOUSEHOLDS = "/v1/datasets/civil/entities/household/records"
AGGREGATE = "/v1/datasets/civil/aggregates/people_by_municipality"
WINDOW = 3600
T0 = 1_800_000_000.0  # a window boundary (a multiple of 3600)


class Clock:
    def __init__(self, now: float = T0 + 10) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# --- the arithmetic ------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    rows=st.integers(1, 50),
    window=st.sampled_from([1, 7, 60, 3600]),
    steps=st.lists(st.tuples(st.integers(-100, 200), st.integers(0, 60)), max_size=60),
)
def test_no_window_ever_spends_more_than_its_budget(
    rows: int, window: int, steps: list[tuple[int, int]]
) -> None:
    """Any sequence of clock moves (backwards too) and spends: per window at most
    ``rows`` are spent, and a refused spend changes nothing."""
    policy = RowBudget(rows=rows, window_seconds=window)
    now, usage = float(T0), None
    spent: dict[int, int] = {}
    for dt, want in steps:
        now += dt
        after = budget.spend(policy, usage, now, want)
        if after is None:
            assert budget.remaining(policy, budget.current(policy, usage, now)) < want
            continue
        spent[after.start] = spent.get(after.start, 0) + want
        assert usage is None or after.start >= usage.start  # windows never move back
        usage = after
    assert all(v <= rows for v in spent.values())


def test_a_clock_that_steps_back_does_not_reopen_a_window() -> None:
    policy = RowBudget(rows=10, window_seconds=WINDOW)
    usage = budget.spend(policy, None, T0 + WINDOW + 5, 10)
    assert usage == Usage(int(T0) + WINDOW, 10)
    assert budget.spend(policy, usage, T0 + 5, 1) is None  # an hour back: still spent
    assert budget.spend(policy, usage, T0 + 2 * WINDOW, 10) == Usage(int(T0) + 2 * WINDOW, 10)
    assert budget.resets_in(policy, usage, T0 + WINDOW + 5) == WINDOW - 5


# --- over HTTP -----------------------------------------------------------------------


def budget_env(tmp: Path, *, household: int = 25, resident: int | None = None) -> RelayEnv:
    env = build_env(tmp, people=600)
    env.doc["row_budgets"] = {"state_dir": str(tmp / "state" / "budgets")}
    civil = env.doc["datasets"][0]
    for e in civil["entities"]:
        if e["name"] == "household":
            e["row_budget"] = {"rows": household, "window_seconds": WINDOW}
        if e["name"] == "resident" and resident is not None:
            e["row_budget"] = {"rows": resident, "window_seconds": WINDOW}
    env.write()
    return env


@pytest.fixture
async def budgeted(tmp_path: Path) -> AsyncIterator[tuple[Running, Clock]]:
    env = budget_env(tmp_path)
    clock = Clock()
    parts, audit = start(env, clock=clock)
    async with parts.app.test_app() as app:
        yield Running(env, parts, audit, app.test_client()), clock
    parts.close()


async def _page(running: Running, query: str, key: str = "all") -> tuple[int, Any, Any]:
    r = await running.get(f"{HOUSEHOLDS}?{query}", key=key)
    return r.status_code, await r.get_json(), r.headers


async def test_paging_stops_at_the_row_budget_with_a_429(budgeted: tuple[Running, Clock]) -> None:
    running, _clock = budgeted
    counts: list[int] = []
    cursor = ""
    for _ in range(3):
        status, body, headers = await _page(running, "limit=10" + cursor)
        assert status == 200
        counts.append(body["count"])
        cursor = "&cursor=" + body["next_cursor"]
    # The last page is clamped to what was left: the budget is never exceeded.
    assert counts == [10, 10, 5]
    assert headers["Assay-Row-Budget-Limit"] == "25"
    assert headers["Assay-Row-Budget-Remaining"] == "0"
    assert headers["Assay-Row-Budget-Reset"] == str(WINDOW - 10)
    status, body, headers = await _page(running, "limit=10" + cursor)
    assert status == 429 and body["code"] == "relay.row_budget_exhausted"
    assert "records" not in body
    assert headers["Retry-After"] == headers["Assay-Row-Budget-Reset"] == str(WINDOW - 10)
    record = running.audit.records[-1]
    assert record["status"] == 429 and record["error_code"] == "relay.row_budget_exhausted"
    assert record["decision"] == "deny"
    assert [r["extra"].get("row_budget_remaining") for r in running.audit.records[:3]] == [
        15,
        5,
        0,
    ]


async def test_an_exhausted_budget_touches_no_data(budgeted: tuple[Running, Clock]) -> None:
    running, _clock = budgeted
    assert (await _page(running, "limit=25"))[0] == 200
    taken: list[str] = []
    original = running.parts.store.get

    def spy(dataset: str, table: str) -> Any:
        taken.append(table)
        return original(dataset, table)

    running.parts.store.get = spy  # type: ignore[method-assign]
    for path in (f"{HOUSEHOLDS}?limit=1", f"{HOUSEHOLDS}/H0000001", f"{HOUSEHOLDS}/H9999999"):
        r = await running.get(path)
        assert r.status_code == 429, path
    assert taken == []  # a miss and a hit answer alike once the budget is spent


async def test_every_lookup_and_page_costs_a_row_hit_or_miss(
    budgeted: tuple[Running, Clock],
) -> None:
    """A miss is an answer ("no record with this id has status closed"), so it costs a
    row like a hit: a 25-row budget asks about at most 25 records, whatever the mix."""
    running, _clock = budgeted
    for i in range(1, 6):
        assert (await running.get(f"{HOUSEHOLDS}/H{i:07d}")).status_code == 200
    assert (await running.get(f"{HOUSEHOLDS}/H9999999")).status_code == 404
    assert (await running.get(f"{HOUSEHOLDS}/H0000001?status=nope")).status_code == 404
    status, body, headers = await _page(running, "status=nope&limit=5")
    assert status == 200 and body["count"] == 0
    assert headers["Assay-Row-Budget-Remaining"] == str(25 - 5 - 2 - 1)
    _status, _body, headers = await _page(running, "limit=1")
    assert headers["Assay-Row-Budget-Remaining"] == str(25 - 5 - 2 - 1 - 1)
    # Refused before any filter is evaluated: free.
    assert (await running.get(f"{HOUSEHOLDS}/H0000001?limit=1")).status_code == 400
    assert (await _page(running, "size=three"))[0] == 400
    _status, _body, headers = await _page(running, "limit=1")
    assert headers["Assay-Row-Budget-Remaining"] == str(25 - 5 - 2 - 1 - 2)


@settings(max_examples=25, deadline=None)
@given(asks=st.lists(st.tuples(st.integers(1, 40), st.booleans()), min_size=1, max_size=40))
def test_no_mix_of_hits_and_misses_learns_about_more_records_than_the_budget(
    tmp_path_factory: pytest.TempPathFactory, asks: list[tuple[int, bool]]
) -> None:
    """Any sequence of lookups (existing or not, matching their filter or not): the
    number of answers that are not 429 never passes the budget."""

    async def main() -> None:
        env = budget_env(tmp_path_factory.mktemp("mix"), household=7)
        parts, _audit = start(env, clock=Clock())
        answered = 0
        async with parts.app.test_app() as app:
            client = app.test_client()
            for n, match in asks:
                status = "active,closed,suspended" if match else "nope"
                path = f"{HOUSEHOLDS}/H{n:07d}?status.in={status}"
                r = await client.get(path, headers=env.headers("read"))
                answered += r.status_code != 429
        parts.close()
        assert answered == min(len(asks), 7)

    trio.run(main)


async def test_the_window_resets_only_when_the_clock_passes_it(
    budgeted: tuple[Running, Clock],
) -> None:
    running, clock = budgeted
    assert (await _page(running, "limit=25"))[0] == 200
    assert (await _page(running, "limit=1"))[0] == 429
    clock.now = T0 - 5 * WINDOW  # a clock stepped back: no earlier window reopens
    assert (await _page(running, "limit=1"))[0] == 429
    clock.now = T0 + WINDOW
    status, body, headers = await _page(running, "limit=25")
    assert status == 200 and body["count"] == 25
    assert headers["Assay-Row-Budget-Reset"] == str(WINDOW)


async def test_a_budget_is_per_credential_and_per_entity(budgeted: tuple[Running, Clock]) -> None:
    running, _clock = budgeted
    assert (await _page(running, "limit=25", key="all"))[0] == 200
    assert (await _page(running, "limit=1", key="all"))[0] == 429
    assert (await _page(running, "limit=25", key="read"))[0] == 200  # another key: its own
    r = await running.get("/v1/datasets/civil/entities/case/records?limit=50", key="case")
    assert r.status_code == 200 and "Assay-Row-Budget-Limit" not in r.headers  # no budget


async def test_concurrent_requests_cannot_race_past_the_budget(
    budgeted: tuple[Running, Clock],
) -> None:
    running, _clock = budgeted
    store = running.parts.budgets
    assert store is not None
    results: list[tuple[int, int]] = []
    inside = peak = 0
    real_spend = store.spend

    async def slow_spend(grant: Any, rows: int) -> Any:
        # Hold every spend open for a few turns of the loop, so requests overlap.
        nonlocal inside, peak
        inside += 1
        peak = max(peak, inside)
        for _ in range(20):
            await trio.lowlevel.checkpoint()
        try:
            return await real_spend(grant, rows)
        finally:
            inside -= 1

    store.spend = slow_spend  # type: ignore[method-assign]

    async def one() -> None:
        status, body, _h = await _page(running, "limit=10")
        results.append((status, body.get("count", 0)))

    async with trio.open_nursery() as nursery:
        for _ in range(12):
            nursery.start_soon(one)
    assert peak > 1  # they did run at once
    assert sum(n for _s, n in results) == 25
    assert {s for s, _n in results} == {200, 429}


async def test_many_small_requests_spend_the_same_budget(
    budgeted: tuple[Running, Clock],
) -> None:
    running, _clock = budgeted
    statuses = [(await _page(running, "limit=1"))[0] for _ in range(30)]
    assert statuses == [200] * 25 + [429] * 5


async def test_aggregate_groups_count_against_the_source_entity(tmp_path: Path) -> None:
    """An aggregate's cells are rows of its source entity's budget: with a small
    ``min_group_size`` they would be rows, so they are no way around the budget."""
    env = budget_env(tmp_path, resident=40)
    parts, _audit = start(env, clock=Clock())
    async with parts.app.test_app() as app:
        client = app.test_client()
        r = await client.get(AGGREGATE, headers=env.headers("agg"))
        groups = len((await r.get_json())["groups"])
        assert r.status_code == 200 and 0 < groups <= 40
        assert r.headers["Assay-Row-Budget-Remaining"] == str(40 - groups)
        r = await client.get(f"{AGGREGATE}?municipality=M99", headers=env.headers("agg"))
        assert (await r.get_json())["groups"] == []  # no cell: still an answer, 1 row
        assert r.headers["Assay-Row-Budget-Remaining"] == str(40 - groups - 1)
        groups += 1
        r = await client.get(AGGREGATE, headers=env.headers("agg"))
        body = await r.get_json()
        assert r.status_code == 429 and "groups" not in body  # all of them or none
        rows = f"/v1/datasets/civil/entities/resident/records?municipality=M01&limit={40 - groups}"
        r = await client.get(rows, headers=env.headers("agg"))
        assert r.status_code == 403  # the agg key has no read scope: budgets add no access
        r = await client.get(rows, headers=env.headers("all"))
        assert r.status_code == 200  # another key, its own budget
    parts.close()


async def test_a_restart_does_not_reset_a_row_budget(tmp_path: Path) -> None:
    env = budget_env(tmp_path)
    clock = Clock()
    for expected in (200, 429, 429):  # spend it all, then two restarts
        parts, _audit = start(env, clock=clock)
        async with parts.app.test_app() as app:
            r = await app.test_client().get(f"{HOUSEHOLDS}?limit=25", headers=env.headers("all"))
            assert r.status_code == expected
        parts.close()
    state = tmp_path / "state" / "budgets" / "row-budgets.sqlite3"
    with sqlite3.connect(state) as db:
        rows = db.execute("SELECT credential, dataset, entity, used FROM spent").fetchall()
    assert rows == [("api_key:all", "civil", "household", 25)]
    raw = b"".join(p.read_bytes() for p in state.parent.iterdir())
    assert not any(k.encode() in raw for k in env.keys.values())  # ids only, never a key
    assert oct(state.stat().st_mode & 0o777) == "0o600"


async def test_budget_state_that_cannot_be_written_fails_closed(
    budgeted: tuple[Running, Clock],
) -> None:
    running, _clock = budgeted
    assert running.parts.budgets is not None
    running.parts.budgets.close()  # the file is gone from under the relay
    status, body, headers = await _page(running, "limit=5")
    assert status == 503 and body["code"] == "relay.row_budget_unavailable"
    assert "records" not in body and "Retry-After" not in headers
    assert running.audit.records[-1]["error_code"] == "relay.row_budget_unavailable"


async def test_the_entity_documents_its_budget(budgeted: tuple[Running, Clock]) -> None:
    running, _clock = budgeted
    doc = await (await running.get("/v1/datasets/civil/entities/household")).get_json()
    assert doc["row_budget"] == {"rows": 25, "window_seconds": WINDOW}
    assert doc["record_lookup"] is True


def test_a_budget_without_a_state_dir_is_refused(tmp_path: Path) -> None:
    import yaml

    from assay.core.errors import ConfigError
    from assay.relay.config import parse_config

    env = budget_env(tmp_path)
    del env.doc["row_budgets"]
    with pytest.raises(ConfigError, match=r"row_budget: needs row_budgets.state_dir"):
        parse_config(yaml.safe_dump(env.doc))


async def test_the_file_is_the_authority_across_processes(tmp_path: Path) -> None:
    """Two relays on one state file (two stores, two memories): neither can spend what the
    other already spent, whatever its own memory says."""
    from assay.relay.budgetstore import BudgetStore
    from assay.relay.errors import BudgetExhausted

    clock = Clock()
    policy = RowBudget(rows=25, window_seconds=WINDOW)
    key = ("api_key:all", "civil", "household")
    a, b = BudgetStore(tmp_path, clock), BudgetStore(tmp_path, clock)
    a.open()
    b.open()
    try:
        grant_a, grant_b = a.reserve(key, policy, 25), b.reserve(key, policy, 25)
        assert grant_a.rows == grant_b.rows == 25  # each memory thinks all 25 are free
        await a.spend(grant_a, 20)
        with pytest.raises(BudgetExhausted):
            await b.spend(grant_b, 6)
        await b.spend(grant_b, 5)
        b.release(grant_b)
        assert b.state(key, policy)[0] == 0
    finally:
        a.close()
        b.close()
