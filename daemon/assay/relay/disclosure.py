"""Grouped aggregates with small-cell suppression that totals cannot undo.

The rules (docs/relay.md explains why each is needed):

1. Groups are always formed over all declared dimensions; a caller cannot ask for a
   coarser grouping whose cells would be sums of finer, suppressed ones.
2. Filters may only name dimension fields (enforced in config), so a filter selects whole
   cells and never splits one: every number published is a cell of one fixed table.
3. A cell whose row count is below ``min_group_size`` (k, at least 3) is suppressed
   (omitted or masked). In a published cell, a field's measures (its count, sum and average) are
   decided together, once: masked unless at least k rows have a value and the rows
   without one are none or at least k, because any two of the three give the third and
   the row count minus the field's count gives the complement.
4. Totals are computed over the published values only, so ``total - sum(published)`` is
   always zero (an average total is the published cells' sums over their counts, never
   over a cell whose count is masked), and the response says how many groups were
   suppressed, never their sum.
5. One aggregate per source population, judged by what a source is and holds (its file,
   bytes and identifier sets exactly, row overlap as an estimate; ``assay.relay.population``,
   enforced in config and snapshot loading), so two groupings cannot be differenced
   against each other.

tests/relay/test_disclosure_audit.py proves the result with an auditor: no suppressed
value is a linear function of the published numbers. Pure: pyarrow ``group_by`` over a
table it is given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from assay.core.errors import BadRequest
from assay.relay.config import Aggregate
from assay.relay.planner import FieldSpec

ROWS = "__rows"


@dataclass(frozen=True)
class AggregateAnswer:
    groups: list[dict[str, Any]]
    suppressed_groups: int
    suppressed_values: int
    totals: dict[str, Any]


def _specs(agg: Aggregate) -> list[tuple[str, str]]:
    """(column, function) pairs pyarrow computes: every measured field's count and sum."""
    wanted: list[tuple[str, str]] = []
    for f in _measured(agg):
        wanted += [(f"v_{f}", "count"), (f"v_{f}", "sum")]
    return wanted


def _measured(agg: Aggregate) -> list[str]:
    return sorted({i.field for i in agg.indicators if i.field is not None})


def field_published(rows: int, count: int, k: int) -> bool:
    """Whether a field's measures (its count, sum and average) are published in a cell.

    They stand or fall together: any two of count, sum and average give the third
    (``count = sum / avg``), and an average that goes into ``totals`` beside other cells'
    published counts gives the count back too. So the decision is made once per field:
    published only when at least ``k`` rows have a value, and the rows without one (the
    complement, ``rows - count``) are none or at least ``k``.
    """
    return count >= k and not 0 < rows - count < k


def _value(fn: str, count: int, total: Any) -> Any:
    if fn == "count":
        return count
    if fn == "sum":
        return total
    return total / count


def aggregate(
    table: pa.Table,
    mask: pa.ChunkedArray | None,
    agg: Aggregate,
    fields: dict[str, FieldSpec],
    *,
    max_groups: int = 10_000,
) -> AggregateAnswer:
    k = agg.disclosure_control.min_group_size
    filtered = table if mask is None else table.filter(mask)
    dims = list(agg.dimensions)
    value_fields = _measured(agg)
    cols = [fields[d].column for d in dims] + [fields[f].column for f in value_fields]
    names = [f"d_{d}" for d in dims] + [f"v_{f}" for f in value_fields]
    view = filtered.select(cols).rename_columns(names)
    specs: list[tuple[Any, str]] = [([], "count_all"), *_specs(agg)]
    grouped = view.group_by([f"d_{d}" for d in dims]).aggregate(specs)
    renamed = [ROWS if c == "count_all" else c for c in grouped.column_names]
    grouped = grouped.rename_columns(renamed)
    if grouped.num_rows > max_groups:
        raise BadRequest(
            f"this aggregate has more than {max_groups} groups; filter on a dimension",
            code="aggregate.too_many_groups",
        )
    grouped = grouped.sort_by([(f"d_{d}", "ascending") for d in dims])
    small = pc.less(grouped.column(ROWS), k)
    suppressed_groups = pc.sum(pc.cast(small, pa.int64())).as_py() or 0
    groups: list[dict[str, Any]] = []
    # Totals add up exactly what was published: rows over published cells, a field's
    # count and sum over the cells where that field was published (an average total is
    # those sums over those counts), so ``total - sum(published)`` is always zero.
    rows_total: int | None = None
    counts: dict[str, int] = {}
    sums: dict[str, Any] = {}
    suppressed_values = 0
    for row, is_small in zip(grouped.to_pylist(), small.to_pylist(), strict=True):
        cell: dict[str, Any] = {d: row[f"d_{d}"] for d in dims}
        if is_small:
            if agg.disclosure_control.suppression == "omit":
                continue
            cell.update({i.id: None for i in agg.indicators})
            cell["suppressed"] = True
            groups.append(cell)
            continue
        rows = row[ROWS]
        rows_total = (rows_total or 0) + rows
        shown = {f for f in value_fields if field_published(rows, row[f"v_{f}_count"], k)}
        for f in shown:
            counts[f] = counts.get(f, 0) + row[f"v_{f}_count"]
            sums[f] = sums.get(f, 0) + row[f"v_{f}_sum"]
        for ind in agg.indicators:
            if ind.field is None:
                cell[ind.id] = rows
            elif ind.field in shown:
                n = row[f"v_{ind.field}_count"]
                cell[ind.id] = _value(ind.function, n, row[f"v_{ind.field}_sum"])
            else:
                cell[ind.id] = None  # a value over too few people, or beside too few
                suppressed_values += 1
        if agg.disclosure_control.suppression == "mask":
            cell["suppressed"] = False
        groups.append(cell)
    totals: dict[str, Any] = {}
    for ind in agg.indicators:
        if ind.field is None:
            totals[ind.id] = rows_total
        elif ind.field in counts:
            totals[ind.id] = _value(ind.function, counts[ind.field], sums[ind.field])
        else:
            totals[ind.id] = None
    return AggregateAnswer(groups, int(suppressed_groups), suppressed_values, totals)
