"""Small cells are suppressed, and no differencing attempt recovers one."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pytest
import yaml

from assay.core.errors import ConfigError
from assay.relay.config import Aggregate, parse_config
from assay.relay.disclosure import aggregate
from assay.relay.planner import Condition, FieldSpec
from assay.relay.query import mask_for
from tests.relay.conftest import Running, example_doc

FIELDS = {
    "muni": FieldSpec("muni", "m", "string"),
    "sex": FieldSpec("sex", "s", "string"),
    "income": FieldSpec("income", "inc", "number"),
}

# A: 20 people, B: 7, C: 3 (a small cell), D: 6 of whom only 2 have an income.
TABLE = pa.table(
    {
        "m": ["A"] * 20 + ["B"] * 7 + ["C"] * 3 + ["D"] * 6,
        "s": ["F", "M"] * 18,
        "inc": [100.0] * 20 + [200.0] * 7 + [999.0] * 3 + [50.0, 60.0, None, None, None, None],
    }
)


def _agg(suppression: str = "omit", k: int = 5, **extra: Any) -> Aggregate:
    return Aggregate.model_validate(
        {
            "id": "by_muni",
            "source_entity": "e",
            "dimensions": ["muni"],
            "indicators": [
                {"id": "people", "function": "count"},
                {"id": "income_sum", "function": "sum", "field": "income"},
                {"id": "income_avg", "function": "avg", "field": "income"},
            ],
            "disclosure_control": {"min_group_size": k, "suppression": suppression},
            **extra,
        }
    )


def test_small_cell_is_omitted_and_counted() -> None:
    answer = aggregate(TABLE, None, _agg(), FIELDS)
    assert [g["muni"] for g in answer.groups] == ["A", "B", "D"]
    assert answer.suppressed_groups == 1


def test_small_cell_is_masked_with_its_values_hidden() -> None:
    answer = aggregate(TABLE, None, _agg("mask"), FIELDS)
    c = next(g for g in answer.groups if g["muni"] == "C")
    assert c == {"muni": "C", "people": None, "income_sum": None, "income_avg": None,
                 "suppressed": True}  # fmt: skip
    assert answer.suppressed_groups == 1


def test_sum_over_too_few_contributors_is_masked_even_in_a_large_cell() -> None:
    d = next(g for g in aggregate(TABLE, None, _agg(), FIELDS).groups if g["muni"] == "D")
    assert d["people"] == 6 and d["income_sum"] is None and d["income_avg"] is None


def test_differencing_the_total_against_published_cells_recovers_nothing() -> None:
    """total - sum(published) is 0: the total is over published values, never the table."""
    for suppression in ("omit", "mask"):
        answer = aggregate(TABLE, None, _agg(suppression), FIELDS)
        published = [g for g in answer.groups if not g.get("suppressed")]
        assert answer.totals["people"] - sum(g["people"] for g in published) == 0
        sums = [g["income_sum"] for g in published if g["income_sum"] is not None]
        assert answer.totals["income_sum"] - sum(sums) == 0
        assert answer.totals["people"] != TABLE.num_rows  # the small cell is not in it


def test_filtering_down_to_the_small_cell_still_suppresses_it() -> None:
    cond = Condition("muni", "m", "string", "eq", ("C",), False)
    answer = aggregate(TABLE, mask_for(TABLE, [cond]), _agg(), FIELDS)
    assert answer.groups == [] and answer.suppressed_groups == 1
    assert answer.totals["people"] is None


def test_filter_that_excludes_big_cells_cannot_isolate_the_small_one() -> None:
    """in-lists select whole cells: the answer for C alone equals C's cell in the full table."""
    both = Condition("muni", "m", "string", "in", ("B", "C"), False)
    only_b = Condition("muni", "m", "string", "eq", ("B",), False)
    a = aggregate(TABLE, mask_for(TABLE, [both]), _agg(), FIELDS)
    b = aggregate(TABLE, mask_for(TABLE, [only_b]), _agg(), FIELDS)
    assert a.totals == b.totals  # the difference between the two queries is zero


def test_count_of_a_field_hides_a_small_complement() -> None:
    agg = _agg(
        indicators=[
            {"id": "people", "function": "count"},
            {"id": "with_income", "function": "count", "field": "income"},
        ]
    )
    table = pa.table({"m": ["A"] * 10, "s": ["F"] * 10, "inc": [1.0] * 8 + [None] * 2})
    (a,) = aggregate(table, None, agg, FIELDS).groups
    assert a["people"] == 10 and a["with_income"] is None  # 10 - 8 would reveal "2 unknown"


AGG = "/v1/datasets/civil/aggregates/people_by_municipality"


async def test_http_aggregate_reports_suppressed_groups_and_audits_them(running: Running) -> None:
    r = await running.get(AGG, key="agg")
    body = await r.get_json()
    assert r.status_code == 200
    assert body["suppressed_groups"] > 0
    assert all(g["people"] >= 5 for g in body["groups"])
    assert body["totals"]["over"] == "published_values"
    assert body["totals"]["people"] == sum(g["people"] for g in body["groups"])
    assert running.audit.records[-1]["extra"]["suppressed_groups"] == body["suppressed_groups"]


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("monthly_income.gte=1000", "aggregate.filter_not_allowed"),  # would split cells
        ("sex=F", "aggregate.filter_not_allowed"),  # a dimension, but not an allowed filter
        ("group_by=municipality", "aggregate.filter_not_allowed"),  # coarser grouping
        ("limit=1", "aggregate.filter_not_allowed"),
        ("municipality=M01&municipality.in=M02", "aggregate.filter_duplicate"),
    ],
)
async def test_http_differencing_levers_are_refused(
    running: Running, query: str, code: str
) -> None:
    r = await running.get(f"{AGG}?{query}", key="agg")
    body = await r.get_json()
    assert r.status_code == 400 and body["code"] == code, body


async def test_http_small_municipality_alone_stays_suppressed(running: Running) -> None:
    full = await (await running.get(AGG, key="agg")).get_json()
    published = {(g["municipality"], g["sex"]) for g in full["groups"]}
    table = running.parts.store.get("civil", "people").data
    munis = set(table.column("municipality").to_pylist())
    small = sorted(m for m in munis if not any(p[0] == m for p in published))
    assert small, "the synthetic data has tiny municipalities"
    r = await running.get(f"{AGG}?municipality={small[0]}", key="agg")
    body = await r.get_json()
    assert body["groups"] == [] and body["suppressed_groups"] >= 1


@pytest.mark.parametrize("k", [1, 2])
def test_a_threshold_under_three_is_refused_since_a_marker_would_say_exactly_one(k: int) -> None:
    """A suppressed cell is known to hold 1..k-1 rows (its marker, or the omitted count)."""
    with pytest.raises(ValueError, match="greater than or equal to 3"):
        _agg(k=k)


def test_a_measure_over_a_dimensions_column_is_refused() -> None:
    """Every row of a cell carries the key: it is the average, and key x count the sum."""
    doc = example_doc()
    ds = doc["datasets"][0]
    resident = next(e for e in ds["entities"] if e["name"] == "resident")
    resident["fields"].append({"name": "income_band", "from": "monthly_income"})
    agg = ds["aggregates"][0]
    agg["dimensions"].append("income_band")
    with pytest.raises(ConfigError) as info:
        parse_config(yaml.safe_dump(doc), source="relay.yaml")
    assert "datasets[0].aggregates[0].indicators[1].field" in info.value.extra["paths"]
    assert "dimension" in info.value.detail
