"""Grouped aggregates with small-cell suppression that totals cannot undo.

The rules (docs/relay.md explains why each is needed):

1. Groups are always formed over all declared dimensions; a caller cannot ask for a
   coarser grouping whose cells would be sums of finer, suppressed ones.
2. Filters may only name dimension fields (enforced in config), so a filter selects whole
   cells and never splits one: every number published is a cell of one fixed table.
3. A cell whose row count is below ``min_group_size`` is suppressed (omitted or masked);
   a sum or average whose non-null contributors are below it is masked on its own, and so
   is a count of a field's values when it or its complement (the nulls) is below it.
4. Totals are computed over the published values only, so ``total - sum(published)`` is
   always zero, and the response says how many groups were suppressed, never their sum.
5. One aggregate per source population (enforced in config), so two groupings cannot be
   differenced against each other.

Pure: pyarrow ``group_by`` over a table it is given.
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


def _specs(agg: Aggregate, fields: dict[str, FieldSpec]) -> list[tuple[str, str]]:
    """(column, function) pairs pyarrow computes; sums and averages also count values."""
    wanted: list[tuple[str, str]] = []
    for ind in agg.indicators:
        if ind.field is None:
            continue
        col = f"v_{ind.field}"
        wanted.append((col, "count"))
        if ind.function in ("sum", "avg"):
            wanted.append((col, "sum"))
    return list(dict.fromkeys(wanted))


def _value(row: dict[str, Any], ind_fn: str, field: str | None) -> tuple[Any, Any, int]:
    """An indicator's value in one group, its raw sum, and how many rows contributed."""
    if field is None:
        return row[ROWS], row[ROWS], row[ROWS]
    n = row[f"v_{field}_count"]
    if ind_fn == "count":
        return n, n, n
    total = row[f"v_{field}_sum"]
    if ind_fn == "sum":
        return total, total, n
    return (total / n if n else None), total, n


def _too_few(fn: str, rows: int, contributors: int, k: int) -> bool:
    """Fewer than k contributors; for a count of a field's values, also fewer than k left
    out, since ``rows - count`` would publish the small complement (e.g. "3 unknown")."""
    if contributors < k:
        return True
    return fn == "count" and 0 < rows - contributors < k


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
    value_fields = sorted({i.field for i in agg.indicators if i.field is not None})
    cols = [fields[d].column for d in dims] + [fields[f].column for f in value_fields]
    names = [f"d_{d}" for d in dims] + [f"v_{f}" for f in value_fields]
    view = filtered.select(cols).rename_columns(names)
    specs: list[tuple[Any, str]] = [([], "count_all"), *_specs(agg, fields)]
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
    totals: dict[str, Any] = {i.id: None for i in agg.indicators}
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
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
        for ind in agg.indicators:
            value, raw_sum, contributors = _value(row, ind.function, ind.field)
            if value is not None and _too_few(ind.function, row[ROWS], contributors, k):
                value = None  # a value over too few people is itself a disclosure
                suppressed_values += 1
            cell[ind.id] = value
            if value is not None:
                sums[ind.id] = sums.get(ind.id, 0) + raw_sum
                counts[ind.id] = counts.get(ind.id, 0) + contributors
        if agg.disclosure_control.suppression == "mask":
            cell["suppressed"] = False
        groups.append(cell)
    for ind in agg.indicators:
        if ind.id not in sums:
            continue
        if ind.function == "avg":
            totals[ind.id] = sums[ind.id] / counts[ind.id] if counts[ind.id] else None
        else:
            totals[ind.id] = sums[ind.id]
    return AggregateAnswer(groups, int(suppressed_groups), suppressed_values, totals)
