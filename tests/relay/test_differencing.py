"""Differencing attacks from an outside suite, each replayed: a masked value must stay masked.

Each test runs the attacker's arithmetic on the relay's answer and asserts that it can no
longer be formed. The first two attack a cell's measures and the totals; the third a
second grouping of the same population behind another path.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from assay.cli import relay_cmd
from assay.core.errors import ConfigError
from assay.relay.config import Aggregate
from assay.relay.disclosure import AggregateAnswer, aggregate
from assay.relay.planner import Bounds, FieldSpec, parse_conditions
from assay.relay.query import mask_for
from tests.relay.conftest import GEN, RelayEnv, build_env, start

FIELDS = {
    "muni": FieldSpec("muni", "m", "string"),
    "income": FieldSpec("income", "inc", "number"),
}
K = 5

# A: 12 people, 10 with an income, so 2 "unknown income": a complement under k=5.
# B: 8 people, all with an income. Both cells are large; only A's count must be hidden.
TABLE = pa.table(
    {
        "m": ["A"] * 12 + ["B"] * 8,
        "inc": [100.0] * 10 + [None, None] + [200.0] * 8,
    }
)
COMPLEMENT_A = 2


def _agg(*indicators: dict[str, Any], suppression: str = "omit") -> Aggregate:
    return Aggregate.model_validate(
        {
            "id": "by_muni",
            "source_entity": "e",
            "dimensions": ["muni"],
            "indicators": [{"id": "people", "function": "count"}, *indicators],
            "allowed_filters": [{"field": "muni", "ops": ["eq", "in"]}],
            "disclosure_control": {"min_group_size": K, "suppression": suppression},
        }
    )


WITH = {"id": "with_income", "function": "count", "field": "income"}
SUM = {"id": "income_sum", "function": "sum", "field": "income"}
AVG = {"id": "income_avg", "function": "avg", "field": "income"}


def _ask(agg: Aggregate, query: list[tuple[str, str]]) -> AggregateAnswer:
    """The answer the service gives: parsed filters, one mask, the aggregate."""
    conditions = parse_conditions(
        query,
        fields=FIELDS,
        allowed={f.field: frozenset[str](f.ops) for f in agg.allowed_filters},
        required=(),
        bounds=Bounds(),
        prefix="aggregate",
    )
    return aggregate(TABLE, mask_for(TABLE, conditions), agg, FIELDS)


def complement_from_sum_and_avg(cell: dict[str, Any], sum_id: str, avg_id: str) -> int | None:
    """The attack: ``rows - round(sum / avg)``, whenever all three are published."""
    rows, total, mean = cell.get("people"), cell.get(sum_id), cell.get(avg_id)
    if rows is None or total is None or not mean:
        return None
    return int(rows - round(total / mean))


def complement_from_avg_totals(
    answer: AggregateAnswer, count_id: str, avg_id: str
) -> dict[Any, int] | None:
    """The attack through ``totals``: ``A * sum(n_c) = sum(a_c * n_c)`` over the cells whose
    average went into the total, solved for the one cell whose count is masked."""
    total = answer.totals.get(avg_id)
    if total is None:
        return None
    cells = [g for g in answer.groups if g.get(avg_id) is not None]
    unknown = [g for g in cells if g.get(count_id) is None]
    if len(unknown) != 1 or unknown[0][avg_id] == total:
        return None
    (u,) = unknown
    known = sum(g[count_id] * (g[avg_id] - total) for g in cells if g is not u)
    return {u["muni"]: int(u["people"] - round(known / (total - u[avg_id])))}


@pytest.mark.parametrize("suppression", ["omit", "mask"])
@pytest.mark.parametrize("count", [True, False], ids=["with-count", "no-count"])
def test_sum_and_avg_cannot_recover_a_masked_count(suppression: str, count: bool) -> None:
    agg = _agg(*([WITH] if count else []), SUM, AVG, suppression=suppression)
    for query in ([], [("muni", "A")], [("muni.in", "A,B")]):
        answer = _ask(agg, query)
        (a,) = [g for g in answer.groups if g["muni"] == "A"]
        assert a["people"] == 12  # the cell is large and published...
        assert a.get("with_income") is None  # ...but how many have an income is not
        assert complement_from_sum_and_avg(a, "income_sum", "income_avg") is None


@pytest.mark.parametrize("suppression", ["omit", "mask"])
@pytest.mark.parametrize("measures", [(WITH, AVG), (WITH, SUM, AVG)], ids=["avg", "sum-avg"])
def test_totals_over_an_in_filter_cannot_recover_a_masked_count(
    suppression: str, measures: tuple[dict[str, Any], ...]
) -> None:
    """The shipped example's indicators (rows, a field's count, its average) over two cells:
    B's count is published, A's is masked; the average total must not give A's back."""
    answer = _ask(_agg(*measures, suppression=suppression), [("muni.in", "A,B")])
    assert {g["muni"]: g["with_income"] for g in answer.groups} == {"A": None, "B": 8}
    assert complement_from_avg_totals(answer, "with_income", "income_avg") is None
    if answer.totals.get("income_sum") is not None and answer.totals.get("income_avg"):
        # The other form: sum(n) = sum total / avg total, minus the published counts.
        n = round(answer.totals["income_sum"] / answer.totals["income_avg"])
        assert n == answer.totals["with_income"]  # only the published cells are in it


# --- the same attacks over HTTP, on the shipped example config and its synthetic data ---

AGG = "/v1/datasets/civil/aggregates/people_by_municipality"


def _targets(env: RelayEnv) -> list[tuple[str, str, int]]:
    """Cells of the example data a masked count must protect: large, with a large income
    count but a small complement (k=5). Found in the data, not in any answer."""
    table = pq.read_table(env.data / "people.parquet")
    munis, sexes = table["municipality"].to_pylist(), table["sex"].to_pylist()
    out = []
    for muni, sex in set(zip(munis, sexes, strict=True)):
        cell = table.filter(
            pc.and_(pc.equal(table["municipality"], muni), pc.equal(table["sex"], sex))
        )
        rows, nulls = cell.num_rows, cell["monthly_income"].null_count
        if rows - nulls >= K and 0 < nulls < K:
            out.append((muni, sex, nulls))
    return sorted(out)


async def _get(env: RelayEnv, query: str) -> dict[str, Any]:
    parts, _audit = start(env)
    async with parts.app.test_app() as app:
        r = await app.test_client().get(f"{AGG}?{query}", headers=env.headers("agg"))
        body: dict[str, Any] = await r.get_json()
        assert r.status_code == 200, body
        return body


async def test_http_sum_and_avg_cannot_recover_a_masked_count(tmp_path: Path) -> None:
    env = build_env(tmp_path)
    env.doc["datasets"][0]["aggregates"][0]["indicators"].append(
        {"id": "total_monthly_income", "function": "sum", "field": "monthly_income"}
    )
    env.write()
    targets = _targets(env)
    assert targets, "the synthetic data has cells with a small income complement"
    for muni, sex, _complement in targets:
        body = await _get(env, f"municipality={muni}")
        (cell,) = [g for g in body["groups"] if g["sex"] == sex]
        assert cell["people_with_income"] is None
        assert (
            complement_from_sum_and_avg(cell, "total_monthly_income", "mean_monthly_income") is None
        )


async def test_http_totals_over_an_in_filter_cannot_recover_a_masked_count(
    tmp_path: Path,
) -> None:
    env = build_env(tmp_path)
    targets = _targets(env)
    assert targets
    table = pq.read_table(env.data / "people.parquet")
    munis = sorted(set(table["municipality"].to_pylist()))
    tried = 0
    for muni, _sex, _complement in targets[:6]:
        other = next(m for m in munis if m != muni and m not in {t[0] for t in targets})
        body = await _get(env, f"municipality.in={muni},{other}")
        groups = [dict(g, muni=(g["municipality"], g["sex"])) for g in body["groups"]]
        answer = AggregateAnswer(groups, body["suppressed_groups"], body["suppressed_values"],
                                 body["totals"])  # fmt: skip
        assert complement_from_avg_totals(answer, "people_with_income", "mean_monthly_income") \
            is None  # fmt: skip
        tried += 1
    assert tried


# --- a second grouping of the same population behind another path ---


def _people_variant(env: RelayEnv, how: str) -> str:
    people = env.data / "people.parquet"
    if how == "relative":
        return os.path.relpath(people, env.config_path.parent)
    if how == "dotted":
        return str(env.data / ".." / env.data.name / "people.parquet")
    if how == "symlink":
        (env.dir / "census.parquet").symlink_to(people)
    elif how == "hardlink":
        os.link(people, env.dir / "census.parquet")
    elif how == "copy":
        shutil.copyfile(people, env.dir / "census.parquet")
    elif how == "csv":
        return str(env.data / "people.csv")  # the same rows in another format
    return str(env.dir / "census.parquet")


def _add_census(env: RelayEnv, path: str) -> None:
    """A second dataset whose aggregate groups people by municipality only: minus the
    first aggregate's published (municipality, sex) cells it gives back suppressed ones."""
    civil = env.doc["datasets"][0]
    census = copy.deepcopy(civil)
    census.update(id="census", title="Census")
    census["access"] = {
        "metadata_scope": "census:metadata",
        "read_scope": "census:read",
        "aggregate_scope": "census:aggregate",
    }
    (people,) = [copy.deepcopy(t) for t in civil["tables"] if t["id"] == "people"]
    people["source"] = {"path": path}
    census["tables"] = [people]
    census["entities"] = [e for e in census["entities"] if e["table"] == "people"]
    coarse = copy.deepcopy(civil["aggregates"][0])
    coarse.update(id="people_by_municipality_only", dimensions=["municipality"])
    census["aggregates"] = [coarse]
    env.doc["datasets"].append(census)
    env.write()


VARIANTS = ["relative", "dotted", "symlink", "hardlink", "copy", "csv"]


@pytest.mark.parametrize("how", VARIANTS)
def test_a_symlinked_or_copied_source_is_the_same_population(tmp_path: Path, how: str) -> None:
    env = build_env(tmp_path)
    _add_census(env, _people_variant(env, how))
    with pytest.raises(ConfigError) as info:
        relay_cmd.check_config(env.config_path, static=False)
    assert "datasets[2].aggregates[0]" in str(info.value.extra.get("paths", info.value.detail))
    assert "population" in info.value.detail
    with pytest.raises(ConfigError):
        start(env)  # serve refuses it the same way


@pytest.mark.parametrize("how", ["relative", "dotted", "symlink"])
def test_static_check_already_sees_through_paths_and_symlinks(tmp_path: Path, how: str) -> None:
    env = build_env(tmp_path)
    _add_census(env, _people_variant(env, how))
    with pytest.raises(ConfigError, match="population"):
        relay_cmd.check_config(env.config_path, static=True)


def _replace_with(how: str, source: Path, target: Path) -> None:
    tmp = target.with_name(target.name + ".new")
    if how == "hardlink":
        os.link(source, tmp)
    else:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


@pytest.mark.parametrize("how", ["hardlink", "copy"])
async def test_a_refresh_that_turns_a_source_into_the_other_population_is_refused(
    tmp_path: Path, how: str
) -> None:
    env = build_env(tmp_path)
    other = env.dir / "census.parquet"
    GEN.write(env.dir / "other", 300, 99)
    shutil.copyfile(env.dir / "other" / "people.parquet", other)
    _add_census(env, str(other))
    parts, _audit = start(env)
    state = next(t for t in parts.store.tables() if t.dataset == "census")
    served = parts.store.get("census", "people").digest
    _replace_with(how, env.data / "people.parquet", other)
    assert await parts.store.reload(state) is False
    assert parts.store.get("census", "people").digest == served  # the old rows keep serving
    assert state.last_error is not None and "population" in state.last_error
    assert parts.store.status()["census.people"]["stale"] is True


def test_distinct_populations_still_load(tmp_path: Path) -> None:
    """The check is about identity, not about having two aggregates at all."""
    env = build_env(tmp_path)
    GEN.write(env.dir / "other", 300, 99)
    _add_census(env, str(env.dir / "other" / "people.parquet"))
    out = relay_cmd.check_config(env.config_path, static=False)
    assert "census.people" in out["tables"]


# --- all three, against a real `assay relay serve` process ---


@pytest.mark.e2e
def test_real_relay_resists_the_three_differencing_attacks(tmp_path: Path) -> None:
    """As the attack suite ran them: over HTTP on loopback against the real daemon, with
    the shipped example's aggregate plus a sum, and a census dataset behind a symlink."""
    import httpx

    from tests.conftest import run_cli
    from tests.relay.test_e2e import running_relay

    env = build_env(tmp_path)
    env.doc["datasets"][0]["aggregates"][0]["indicators"].append(
        {"id": "total_monthly_income", "function": "sum", "field": "monthly_income"}
    )
    targets = _targets(env)
    assert targets
    table = pq.read_table(env.data / "people.parquet")
    plain = sorted(set(table["municipality"].to_pylist()) - {t[0] for t in targets})
    relay = running_relay(env, tmp_path / "relay.log")
    with relay as (url, _proc), httpx.Client(base_url=url, timeout=30) as client:
        for muni, sex, _complement in targets:
            query = f"{AGG}?municipality.in={muni},{plain[0]}"
            body = client.get(query, headers=env.headers("agg")).json()
            groups = [dict(g, muni=(g["municipality"], g["sex"])) for g in body["groups"]]
            (cell,) = [g for g in groups if g["muni"] == (muni, sex)]
            assert cell["people_with_income"] is None
            sums = ("total_monthly_income", "mean_monthly_income")
            assert complement_from_sum_and_avg(cell, *sums) is None
            answer = AggregateAnswer(groups, 0, 0, body["totals"])
            counted = ("people_with_income", "mean_monthly_income")
            assert complement_from_avg_totals(answer, *counted) is None
    _add_census(env, _people_variant(env, "symlink"))
    config = str(env.config_path)
    for args in (["check-config", config], ["serve", "--config", config]):
        out = run_cli("relay", *args, timeout=60)
        assert out.returncode != 0 and "population" in out.stderr + out.stdout, out


async def test_a_refresh_between_two_queries_is_named_in_both_answers_and_the_audit(
    tmp_path: Path,
) -> None:
    """Differencing across snapshots is out of scope (docs/relay.md): the change of a cell
    between two snapshots is the contribution of the rows that changed. What the relay
    does promise is that it is visible: each answer is from one snapshot and says which,
    and the audit keeps which snapshot each caller asked."""
    env = build_env(tmp_path)
    parts, audit = start(env)
    people = env.data / "people.parquet"
    async with parts.app.test_app() as app:
        client = app.test_client()
        before = await (await client.get(AGG, headers=env.headers("agg"))).get_json()
        table = pq.read_table(people)
        pq.write_table(table.slice(1), people.with_suffix(".new"))
        os.replace(people.with_suffix(".new"), people)  # one person fewer
        state = next(t for t in parts.store.tables() if t.where == "civil.people")
        assert await parts.store.reload(state) is True
        after = await (await client.get(AGG, headers=env.headers("agg"))).get_json()
    assert before["snapshot"] != after["snapshot"]
    assert before["totals"]["people"] != after["totals"]["people"]
    asked = [r["extra"] for r in audit.records if r["action"] == "relay.aggregate"]
    assert [a["snapshot_tag"] for a in asked] == [before["snapshot"], after["snapshot"]]
    # The audit also keeps the source's own digest, which callers never see.
    digests = [a["snapshot"] for a in asked]
    assert digests[1] == "sha256:" + hashlib.sha256(people.read_bytes()).hexdigest()
    assert not {before["snapshot"], after["snapshot"]} & set(digests)
