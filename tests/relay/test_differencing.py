"""Differencing attacks from an outside suite, each replayed: a masked value must stay masked.

Each test runs the attacker's arithmetic on the relay's answer and asserts that it can no
longer be formed: on a cell's measures, and on the totals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from assay.relay.config import Aggregate
from assay.relay.disclosure import AggregateAnswer, aggregate
from assay.relay.planner import Bounds, FieldSpec, parse_conditions
from assay.relay.query import mask_for
from tests.relay.conftest import RelayEnv, build_env, start

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
