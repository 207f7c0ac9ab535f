"""The disclosure auditor (tests/relay/auditor.py) over generated tables and the example.

Hypothesis generates small tables with planted rare cells and planted small null
complements, an aggregate config (threshold, mode, dimensions of several types, any
indicators, any allowed filter ops) and random sets of the queries that config allows; the
auditor expresses every published number as a linear function of the records and checks
that no suppressed value, nor any combination of them, is in their span. First the
auditor is shown to catch the leaks it is meant to catch.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from assay.relay import disclosure
from assay.relay.config import Aggregate
from assay.relay.planner import Bounds, Condition, FieldSpec, parse_conditions
from assay.relay.query import mask_for
from tests.relay.auditor import Auditor, Leak
from tests.relay.conftest import build_env, start

# --- the auditor catches what it must -------------------------------------------------


def _small_agg(
    *indicators: dict[str, Any], k: int = 5, dims: list[str] | None = None, agg_id: str = "by_muni"
) -> Aggregate:
    return Aggregate.model_validate(
        {
            "id": agg_id,
            "source_entity": "e",
            "dimensions": dims or ["muni"],
            "indicators": [{"id": "people", "function": "count"}, *indicators],
            "allowed_filters": [{"field": "muni", "ops": ["eq", "in"]}],
            "disclosure_control": {"min_group_size": k, "suppression": "omit"},
        }
    )


WITH = {"id": "with_income", "function": "count", "field": "income"}
SUM = {"id": "income_sum", "function": "sum", "field": "income"}
AVG = {"id": "income_avg", "function": "avg", "field": "income"}
# The attack suite's table: A has 12 rows, 10 incomes (a complement of 2); B 8 rows.
COLUMNS = {
    "muni": ["A"] * 12 + ["B"] * 8,
    "sex": ["F", "M"] * 10,
    "income": [100.0] * 10 + [None, None] + [200.0] * 8,
}
BOTH = [("muni", "in", ("A", "B"))]


def _old_answer(sum_too: bool) -> dict[str, Any]:
    """What the relay answered before the fix, for ``muni.in=A,B``: A's count masked, its
    average (and sum) published, and the average total over both cells."""
    a = {"muni": "A", "people": 12, "with_income": None, "income_avg": 100.0}
    b = {"muni": "B", "people": 8, "with_income": 8, "income_avg": 200.0}
    totals: dict[str, Any] = {"people": 20, "with_income": 8, "income_avg": 2600 / 18}
    if sum_too:
        a["income_sum"], b["income_sum"], totals["income_sum"] = 1000.0, 1600.0, 2600.0
    return {"groups": [a, b], "suppressed_groups": 0, "suppressed_values": 1, "totals": totals}


def test_auditor_finds_a_count_given_back_by_a_sum_and_an_average() -> None:
    auditor = Auditor(COLUMNS)
    auditor.add_aggregate(_small_agg(WITH, SUM, AVG))
    answer = _old_answer(sum_too=True)
    answer["totals"] = {
        "people": 12,
        "with_income": None,
        "income_sum": 1000.0,
        "income_avg": 100.0,
    }
    answer["groups"] = answer["groups"][:1]
    auditor.observe("by_muni", [("muni", "eq", ("A",))], answer)
    with pytest.raises(Leak, match=r"by_muni\('A',\) count\(income\)"):
        auditor.verdict()


def test_auditor_finds_a_count_given_back_by_the_average_total_alone() -> None:
    """No sum anywhere: only averages and one cell's count, yet the average total over
    two cells is a linear relation that pins the masked count."""
    auditor = Auditor(COLUMNS)
    auditor.add_aggregate(_small_agg(WITH, AVG))
    auditor.observe("by_muni", BOTH, _old_answer(sum_too=False))
    with pytest.raises(Leak, match=r"count\(income\)"):
        auditor.verdict()


def test_auditor_finds_the_cell_a_second_grouping_of_the_population_gives_back() -> None:
    """(muni, sex) hides a small cell; a second aggregate over the same rows by muni alone
    publishes its margin, and the margin minus the published cells is the small cell."""
    columns = {
        "muni": ["A"] * 9 + ["B"] * 6,
        "sex": ["F"] * 7 + ["M"] * 2 + ["F", "M"] * 3,
        "income": [1.0] * 15,
    }
    fine = _small_agg(dims=["muni", "sex"], agg_id="fine", k=3)
    coarse = _small_agg(dims=["muni"], agg_id="coarse", k=3)
    auditor = Auditor(columns)
    table = _arrow(columns)
    for agg in (fine, coarse):
        auditor.add_aggregate(agg)
        answer = disclosure.aggregate(table, None, agg, _fields(columns))
        auditor.observe(agg.id, [], _as_dict(answer))
    with pytest.raises(Leak, match=r"fine\('A', 'M'\) rows"):
        auditor.verdict()


def test_auditor_finds_a_published_sum_of_suppressed_cells() -> None:
    """(A, F) and (A, M) both hold 2 rows (k=3), A alone holds 4: neither cell is a linear
    function of what is published, but their sum is, and with each known to be 1..2 rows
    a sum of 4 says both are 2. The auditor refuses any combination of secrets."""
    columns = {"muni": ["A"] * 4 + ["B"] * 6, "sex": ["F", "F", "M", "M"] + ["F", "M"] * 3,
               "income": [1.0] * 10}  # fmt: skip
    auditor = Auditor(columns)
    table = _arrow(columns)
    for agg in (_small_agg(dims=["muni", "sex"], agg_id="fine", k=3),
                _small_agg(dims=["muni"], agg_id="coarse", k=3)):  # fmt: skip
        auditor.add_aggregate(agg)
        answer = disclosure.aggregate(table, None, agg, _fields(columns))
        auditor.observe(agg.id, [], _as_dict(answer))
    with pytest.raises(Leak, match="combination"):
        auditor.verdict()


def test_auditor_refuses_a_total_over_rows_it_did_not_publish() -> None:
    """A total that also adds up the omitted cell B is not the function it claims to be."""
    auditor = Auditor(COLUMNS)
    auditor.add_aggregate(_small_agg(k=9))
    answer = {
        "groups": [{"muni": "A", "people": 12}],
        "suppressed_groups": 1,
        "suppressed_values": 0,
        "totals": {"people": 20},
    }
    with pytest.raises(Leak, match="total people"):
        auditor.observe("by_muni", [], answer)


# --- generated tables, configs and queries --------------------------------------------

DIMS = {
    "region": ("string", ["e", "n", "s", "w"], ["eq", "in", "gte", "lte", "between"]),
    "band": ("integer", [1, 2, 3, 4], ["eq", "in", "gte", "lte", "between"]),
    "flag": ("boolean", [False, True], ["eq", "in"]),
}
MEASURES = {"x": "number", "y": "integer"}
ARROW = {
    "string": pa.string(),
    "integer": pa.int64(),
    "boolean": pa.bool_(),
    "number": pa.float64(),
}


def _arrow(columns: dict[str, list[Any]], types: dict[str, str] | None = None) -> pa.Table:
    types = types or {}
    return pa.table(
        {
            f"c_{name}": pa.array(values, ARROW[types[name]] if name in types else None)
            for name, values in columns.items()
        }
    )


def _fields(columns: dict[str, Any], types: dict[str, str] | None = None) -> dict[str, FieldSpec]:
    types = types or {}
    return {name: FieldSpec(name, f"c_{name}", types.get(name, "string")) for name in columns}


def _as_dict(answer: disclosure.AggregateAnswer) -> dict[str, Any]:
    return {
        "groups": answer.groups,
        "suppressed_groups": answer.suppressed_groups,
        "suppressed_values": answer.suppressed_values,
        "totals": answer.totals,
    }


def _raw(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


@dataclass
class Scenario:
    columns: dict[str, list[Any]]
    types: dict[str, str]
    agg: Aggregate
    queries: list[list[tuple[str, str]]]


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    k = draw(st.integers(3, 5))
    dims = draw(st.lists(st.sampled_from(sorted(DIMS)), min_size=1, max_size=2, unique=True))
    nullable = {d: draw(st.booleans()) for d in dims}
    vocab = {d: DIMS[d][1] + ([None] if nullable[d] else []) for d in dims}
    measures = draw(st.lists(st.sampled_from(sorted(MEASURES)), max_size=2, unique=True))
    candidates = [{"function": "count"}] + [
        {"function": fn, "field": m} for m in measures for fn in ("count", "sum", "avg")
    ]
    chosen = draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=len(candidates)))
    indicators = [dict(ind, id=f"i{j}") for j, ind in enumerate(chosen)]
    keys = draw(
        st.lists(
            st.tuples(*(st.sampled_from(vocab[d]) for d in dims)),
            min_size=1,
            max_size=6,
            unique=True,
        )
    )
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    records: list[dict[str, Any]] = []
    for j, key in enumerate(keys):
        # The first cell is large (something is published); the others may be rare.
        large = st.integers(k, k + 6)
        size = draw(large if j == 0 else st.one_of(st.integers(1, k - 1), large))
        nulls = {
            m: min(size, draw(st.one_of(st.just(0), st.integers(1, k - 1), st.integers(0, size))))
            for m in measures
        }
        for i in range(size):
            rec: dict[str, Any] = dict(zip(dims, key, strict=True))
            for m in measures:
                v = rng.randint(0, 20)
                rec[m] = None if i < nulls[m] else (float(v) if MEASURES[m] == "number" else v)
            records.append(rec)
    rng.shuffle(records)
    names = dims + measures
    columns = {n: [r[n] for r in records] for n in names}
    types = {**{d: DIMS[d][0] for d in dims}, **{m: MEASURES[m] for m in measures}}
    allowed = []
    for d in dims:
        ops = draw(st.lists(st.sampled_from(DIMS[d][2]), max_size=5, unique=True))
        if ops:
            allowed.append({"field": d, "ops": ops})
    agg = Aggregate.model_validate(
        {
            "id": "gen",
            "source_entity": "e",
            "dimensions": dims,
            "indicators": indicators,
            "allowed_filters": allowed,
            "disclosure_control": {
                "min_group_size": k,
                "suppression": draw(st.sampled_from(["omit", "mask"])),
            },
        }
    )
    queries: list[list[tuple[str, str]]] = [[]]
    for flt in allowed:  # every single value, and every pair, where the ops allow them
        values = DIMS[flt["field"]][1]
        if "eq" in flt["ops"]:
            queries += [[(flt["field"], _raw(v))] for v in values]
        if "in" in flt["ops"]:
            queries += [
                [(f"{flt['field']}.in", f"{_raw(a)},{_raw(b)}")]
                for a, b in itertools.combinations(values, 2)
            ]
    for _ in range(draw(st.integers(0, 8))):
        query = []
        for flt in allowed:
            if not draw(st.booleans()):
                continue
            op = draw(st.sampled_from(flt["ops"]))
            domain = DIMS[flt["field"]][1] + (["zz"] if types[flt["field"]] == "string" else [])
            picked = draw(st.lists(st.sampled_from(domain), min_size=1, max_size=3, unique=True))
            if op == "between":
                lo, hi = (min(picked), max(picked))
                query.append((f"{flt['field']}.between", f"{_raw(lo)},{_raw(hi)}"))
            elif op == "in":
                query.append((f"{flt['field']}.in", ",".join(_raw(v) for v in picked)))
            else:
                suffix = "" if op == "eq" else f".{op}"
                query.append((f"{flt['field']}{suffix}", _raw(picked[0])))
        queries.append(query)
    return Scenario(columns, types, agg, queries)


def _run(s: Scenario) -> Auditor:
    table = _arrow(s.columns, s.types)
    fields = _fields(s.columns, s.types)
    auditor = Auditor(s.columns)
    auditor.add_aggregate(s.agg)
    allowed = {f.field: frozenset[str](f.ops) for f in s.agg.allowed_filters}
    for args in s.queries:
        conditions: tuple[Condition, ...] = parse_conditions(
            args, fields=fields, allowed=allowed, required=(), bounds=Bounds(), prefix="aggregate"
        )
        answer = disclosure.aggregate(table, mask_for(table, conditions), s.agg, fields)
        auditor.observe(s.agg.id, [(c.field, c.op, c.values) for c in conditions], _as_dict(answer))
    return auditor


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_no_suppressed_value_is_in_the_span_of_what_generated_configs_publish(
    s: Scenario,
) -> None:
    summary = _run(s).verdict()
    assert summary["published"] > 0


def _planted_complement(s: Scenario) -> bool:
    """A cell the rules publish, with a field counted, that has 1..k-1 nulls."""
    k = s.agg.disclosure_control.min_group_size
    counted = {i.field for i in s.agg.indicators if i.function == "count" and i.field}
    cells: dict[tuple[Any, ...], list[int]] = {}
    for r in range(len(next(iter(s.columns.values())))):
        cells.setdefault(tuple(s.columns[d][r] for d in s.agg.dimensions), []).append(r)
    for rows in cells.values():
        for f in counted:
            nulls = sum(s.columns[f][r] is None for r in rows)
            if len(rows) - nulls >= k and 0 < nulls < k:
                return True
    return False


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
@given(scenarios())
def test_auditor_catches_a_rule_that_forgets_the_complement(s: Scenario) -> None:
    """A mutant of the rule (a field's count published whenever k rows have a value) must
    be caught on every table where it matters: the auditor is not vacuous."""
    assume(_planted_complement(s))
    with pytest.MonkeyPatch.context() as m:
        m.setattr(disclosure, "field_published", lambda rows, count, k: count >= k)
        with pytest.raises(Leak):
            _run(s).verdict()


# --- the shipped example config over its generated synthetic data --------------------

AGG = "/v1/datasets/civil/aggregates/people_by_municipality"


@pytest.fixture(scope="module")
def example_answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The example relay (relay/example/relay.yaml) over generate_dataset.py's default
    dataset (100,000 people, its default seed), asked every query below over HTTP."""
    import trio

    env = build_env(tmp_path_factory.mktemp("example"), people=100_000, seed=20_240_601)
    table = pq.read_table(env.data / "people.parquet")
    munis = sorted(set(table["municipality"].to_pylist()))
    rng = random.Random(20_240_601)
    queries = [""] + [f"municipality={m}" for m in [*munis, "M99"]]
    queries += [f"municipality.in={a},{b}" for a, b in itertools.pairwise(munis)]
    queries += [
        f"municipality.in={','.join(rng.sample(munis, rng.randint(2, 12)))}" for _ in range(20)
    ]
    answers: dict[str, Any] = {}

    async def ask() -> None:
        parts, _audit = start(env)
        async with parts.app.test_app() as app:
            client = app.test_client()
            for q in queries:
                r = await client.get(f"{AGG}?{q}" if q else AGG, headers=env.headers("agg"))
                assert r.status_code == 200
                answers[q] = await r.get_json()

    trio.run(ask)
    doc = env.doc["datasets"][0]
    return {"table": table, "answers": answers, "doc": doc}


def test_example_config_publishes_no_suppressed_value(example_answers: dict[str, Any]) -> None:
    doc = example_answers["doc"]
    agg = Aggregate.model_validate(doc["aggregates"][0])
    resident = next(e for e in doc["entities"] if e["name"] == agg.source_entity)
    table: pa.Table = example_answers["table"]
    columns = {f["name"]: table[f.get("from", f["name"])].to_pylist() for f in resident["fields"]}
    fields = {name: FieldSpec(name, name, "string") for name in columns}
    allowed = {f.field: frozenset[str](f.ops) for f in agg.allowed_filters}
    auditor = Auditor(columns)
    auditor.add_aggregate(agg)
    for query, body in example_answers["answers"].items():
        args = [tuple(part.split("=", 1)) for part in query.split("&") if part]
        conditions = parse_conditions(
            args, fields=fields, allowed=allowed, required=(), bounds=Bounds(), prefix="aggregate"
        )
        auditor.observe(agg.id, [(c.field, c.op, c.values) for c in conditions], body)
    summary = auditor.verdict()
    # The example really suppresses: tiny municipalities, and small income complements.
    assert summary["secrets"] > 10 and len(auditor.facts) > 0, summary
    print("example audit:", summary)
