"""One grouping per population, attacked as an operator's export tools would break it.

The exact check (identifier sets) must see through every re-spelling of the same rows:
another unique column, integers written as floats or text, leading zeros, padding, case,
row and column order, CSV quoting, Parquet types. The estimate (row overlap) must catch
subsets, supersets and composite-keyed copies, and leave unrelated tables alone, row
numbers included. Tables are generated; the differential reference is the rows
themselves.
"""

from __future__ import annotations

import copy
import io
import random
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assay.cli import relay_cmd
from assay.core.errors import ConfigError
from assay.relay import population
from assay.relay.config import Table
from assay.relay.decode import decode
from assay.relay.population import SourceIdentity, fingerprint, overlap_reason
from tests.relay.conftest import GEN, RelayEnv, build_env, start

SCHEMA = [
    {"name": "pid", "type": "string", "nullable": False},
    {"name": "nid", "type": "integer", "nullable": False},
    {"name": "muni", "type": "string", "nullable": False},
    {"name": "sex", "type": "string"},
    {"name": "income", "type": "number"},
]


def _people(n: int, seed: int) -> pa.Table:
    rng = random.Random(seed)
    nids = rng.sample(range(10**8, 10**9), n)
    return pa.table({
        "pid": pa.array([f"P{i:08d}" for i in range(1, n + 1)], pa.string()),
        "nid": pa.array(nids, pa.int64()),
        "muni": pa.array([rng.choice(["M01", "M02", "M03"]) for _ in range(n)], pa.string()),
        "sex": pa.array([rng.choice(["F", "M", None]) for _ in range(n)], pa.string()),
        "income": pa.array([round(rng.uniform(100, 9000), 2) for _ in range(n)], pa.float64()),
    })  # fmt: skip


def _spec(fmt: str, key: str = "pid", schema: list[dict[str, Any]] | None = None) -> Table:
    return Table.model_validate({"id": "t", "source": {"path": f"t.{fmt}"}, "primary_key": key,
                                 "schema": schema or SCHEMA})  # fmt: skip


def _identity(table: pa.Table) -> SourceIdentity:
    return SourceIdentity(identifiers=fingerprint(table).identifiers)


def _csv(table: pa.Table, quoting: str) -> bytes:
    sink = io.BytesIO()
    pacsv.write_csv(table, sink, write_options=pacsv.WriteOptions(quoting_style=quoting))
    return sink.getvalue()


def _parquet(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue().to_pybytes())


# --- the exact check -----------------------------------------------------------------


@st.composite
def _respelled(draw: st.DrawFn) -> tuple[pa.Table, pa.Table]:
    """The same rows as another export writes them, decoded as the relay decodes them."""
    base = _people(draw(st.integers(5, 60)), draw(st.integers(0, 10**6)))
    rows = draw(st.permutations(list(range(base.num_rows))))
    other = base.take(pa.array(rows))
    cols = draw(st.permutations(other.column_names))
    other = other.select(cols)
    schema = copy.deepcopy(SCHEMA)
    how = draw(st.sampled_from(["float", "text", "zeros", "padded", "none"]))
    nid = other.column("nid").to_pylist()
    if how == "float":
        other = other.set_column(cols.index("nid"), "nid", pa.array([float(v) for v in nid]))
        schema[1]["type"] = "number"
    elif how in ("text", "zeros", "padded"):
        spelled = {"text": "{}", "zeros": "000{}", "padded": " {} "}[how]
        other = other.set_column(
            cols.index("nid"), "nid", pa.array([spelled.format(v) for v in nid])
        )
        schema[1]["type"] = "string"
    if draw(st.booleans()):
        upper = [v.upper() if draw(st.booleans()) else v for v in other.column("pid").to_pylist()]
        other = other.set_column(cols.index("pid"), "pid", pa.array(upper))
    fmt = draw(st.sampled_from(["csv", "parquet"]))
    if fmt == "csv":
        quoting = draw(st.sampled_from(["needed", "all_valid", "none"]))
        data = _csv(other, quoting)
    else:
        data = _parquet(other)
    key = draw(st.sampled_from(["pid", "nid"]))
    decoded = decode(data, _spec(fmt, key, schema), where="census.t")
    return decode(_parquet(base), _spec("parquet"), where="civil.t"), decoded


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(pair=_respelled())
def test_the_same_rows_respelled_have_the_same_identifiers(pair: tuple[pa.Table, pa.Table]) -> None:
    """Another key column, int as float or text, leading zeros, padding, case, row and
    column order, CSV quoting or Parquet: the exact check says "the same records"."""
    original, respelled = pair
    why = _identity(respelled).same_population(_identity(original))
    assert why is not None and "the same records" in why


def test_a_row_number_key_is_not_an_identity_but_the_rows_still_are() -> None:
    """``seq`` 1..n is the only identifier the two declare alike: it places rows, so it is
    left out of the exact check (two unrelated tables of one size share it), and the
    rows themselves are compared instead."""
    a = pa.table({"seq": pa.array(range(1, 41)), "muni": ["M01", "M02"] * 20,
                  "income": [float(i) * 1.5 for i in range(40)]})  # fmt: skip
    b = a.set_column(0, "seq", pa.array([float(v) for v in range(1, 41)]))
    assert fingerprint(a).sequences == {"seq"} and "seq" not in dict(fingerprint(a).identifiers)
    unrelated = a.set_column(2, "income", pa.array([float(i) * 7.25 + 3 for i in range(40)]))
    assert "income" in dict(fingerprint(a).identifiers)
    assert _identity(unrelated).same_population(_identity(a)) is None
    assert overlap_reason(unrelated, fingerprint(unrelated), a, fingerprint(a)) is None
    assert overlap_reason(b, fingerprint(b), a, fingerprint(a)) is not None


def test_unrelated_tables_keyed_one_to_n_are_not_one_population() -> None:
    """Sequential ids (integers, or ``P`` and digits) of two populations of one size."""
    a, b = _people(200, 1), _people(200, 2)
    assert _identity(a).same_population(_identity(b)) is None
    assert overlap_reason(a, fingerprint(a), b, fingerprint(b)) is None


# --- the estimate ----------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(20, 120),
    seed=st.integers(0, 10**6),
    keep=st.floats(0.5, 1.0),
    extra=st.integers(0, 30),
)
def test_subsets_and_supersets_are_caught(n: int, seed: int, keep: float, extra: int) -> None:
    """A subset of at least half the rows, plus up to 30 rows of other people: the
    smaller table's rows are mostly in the larger, so the estimate refuses it."""
    base = _people(n, seed)
    kept = base.slice(0, max(1, int(n * keep)))
    others = _people(extra, seed + 1).set_column(
        0, "pid", pa.array([f"Q{i}" for i in range(extra)], pa.string())
    )
    mixed = pa.concat_tables([kept, others])
    share = min(1.0, kept.num_rows / min(mixed.num_rows, base.num_rows))
    why = overlap_reason(mixed, fingerprint(mixed), base, fingerprint(base))
    assert (why is not None) == (share >= population.OVERLAP_SHARE), (share, why)


def test_a_composite_key_copy_with_one_row_more_is_caught() -> None:
    """No single column identifies a row, (household, member) does: the exact check has
    nothing to compare, the rows do."""
    rows = [(f"H{h:05d}", m, ["M01", "M02"][h % 2], f"{(h * 37 + m) % 1000 / 7:.2f}")
            for h in range(60) for m in range(1, 4)]  # fmt: skip
    names = ["household", "member", "muni", "income"]
    a = pa.table(dict(zip(names, map(list, zip(*rows, strict=True)), strict=True)))
    b = pa.concat_tables([a, pa.table({"household": ["H99999"], "member": [1],
                                       "muni": ["M01"], "income": ["1.00"]})])  # fmt: skip
    assert not fingerprint(a).identifiers
    assert overlap_reason(b, fingerprint(b), a, fingerprint(a)) is not None


def test_columns_that_do_not_tell_rows_apart_are_not_compared() -> None:
    """Households and people share only ``muni``: most rows look alike there, which says
    nothing about who they are, so no overlap is claimed."""
    people = _people(300, 3)
    households = pa.table({"hid": [f"H{i}" for i in range(100)], "muni": ["M01"] * 100})
    assert overlap_reason(households, fingerprint(households), people, fingerprint(people)) is None


# --- through the relay: startup, check-config and reload --------------------------------


def _census(env: RelayEnv, path: Path) -> None:
    civil = env.doc["datasets"][0]
    census = copy.deepcopy(civil)
    census.update(id="census", title="Census")
    census["access"] = {"metadata_scope": "census:metadata", "read_scope": "census:read",
                        "aggregate_scope": "census:aggregate"}  # fmt: skip
    (people,) = [copy.deepcopy(t) for t in civil["tables"] if t["id"] == "people"]
    people["source"] = {"path": str(path)}
    census["tables"] = [people]
    census["entities"] = [e for e in census["entities"] if e["name"] == "resident"]
    coarse = copy.deepcopy(civil["aggregates"][0])
    coarse.update(id="people_by_municipality_only", dimensions=["municipality"])
    census["aggregates"] = [coarse]
    env.doc["datasets"].append(census)
    env.write()


def test_a_subset_extract_of_an_aggregated_table_does_not_start(tmp_path: Path) -> None:
    env = build_env(tmp_path, people=400)
    half = pq.read_table(env.data / "people.parquet").slice(0, 250)
    pq.write_table(half, env.dir / "extract.parquet")
    _census(env, env.dir / "extract.parquet")
    with pytest.raises(ConfigError) as info:
        relay_cmd.check_config(env.config_path, static=False)
    assert "population" in info.value.detail and "largely the same rows" in info.value.detail


async def test_a_refresh_into_a_superset_of_the_other_population_is_refused(
    tmp_path: Path,
) -> None:
    """The census starts as other people; a refresh makes it the civil people plus a few
    more: refused, the old snapshot keeps serving, the table shows as stale."""
    env = build_env(tmp_path, people=300)
    GEN.write(env.dir / "other", 300, 99)
    census = env.dir / "census.parquet"
    shutil.copyfile(env.dir / "other" / "people.parquet", census)
    _census(env, census)
    parts, _audit = start(env)
    state = next(t for t in parts.store.tables() if t.dataset == "census")
    served = parts.store.get("census", "people").digest
    civil = pq.read_table(env.data / "people.parquet")
    more = pq.read_table(env.dir / "other" / "people.parquet").slice(0, 20)
    more = more.set_column(0, "person_id", pa.array([f"Z{i:08d}" for i in range(20)]))
    pq.write_table(pa.concat_tables([civil, more]), census.with_suffix(".new"))
    census.with_suffix(".new").replace(census)
    assert await parts.store.reload(state) is False
    assert parts.store.get("census", "people").digest == served
    assert state.last_error is not None and "population" in state.last_error
    parts.close()


def test_a_minimal_extract_numbered_like_the_population_is_caught() -> None:
    """``person_id`` (a row number: ``P`` and contiguous digits), ``municipality`` and
    ``sex``, nothing else: no identifier set to compare and the other columns do not
    tell rows apart, but lined up by number the rows agree far beyond chance. Another
    population numbered alike agrees only by chance."""
    people, _ = GEN.generate(600, 7)
    extract = people.select(["person_id", "municipality", "sex"])
    other = GEN.generate(600, 8)[0].select(["person_id", "municipality", "sex"])
    assert fingerprint(extract).sequences == {"person_id"} and not fingerprint(extract).identifiers
    assert overlap_reason(extract, fingerprint(extract), people, fingerprint(people)) is not None
    assert overlap_reason(other, fingerprint(other), people, fingerprint(people)) is None
    share = population.row_overlap(other, fingerprint(other), people, fingerprint(people))
    assert share is not None and share[0] < 0.2


@pytest.mark.parametrize(
    "rows",
    [range(0, 600, 2), range(599, -1, -1), range(400, 600), range(0, 300)],
    ids=["every-other-row", "reversed", "last-third", "first-half"],
)
def test_a_minimal_extract_of_part_of_the_population_is_caught(rows: range) -> None:
    """Every other row (its numbers no longer contiguous, so no row number of its own),
    reversed, or a slice: lined up by the population's row number, the extract is still
    the same people."""
    people, _ = GEN.generate(600, 7)
    extract = people.select(["person_id", "municipality", "sex"]).take(pa.array(list(rows)))
    assert overlap_reason(extract, fingerprint(extract), people, fingerprint(people)) is not None
