"""Plans executed over an Arrow table with pyarrow compute: masks, takes and projections.

Why this shape: the mask is built from declared columns with ``pyarrow.compute``
comparisons, the page is a slice of the matching row indices, and only the projected
columns of those rows are ever materialized, so an undeclared column cannot reach an
answer and a page costs one scan plus ``limit`` rows. A primary-key lookup uses the
snapshot's index and touches one row. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from assay.relay.decode import ARROW_TYPES
from assay.relay.planner import Condition, FieldSpec


def build_index(table: pa.Table, key: str) -> dict[Any, int]:
    """Primary-key value to row number; built once per snapshot, off the event loop."""
    return {v: i for i, v in enumerate(table.column(key).to_pylist())}


def _scalar(value: Any, ftype: str) -> pa.Scalar:
    return pa.scalar(value, type=ARROW_TYPES[ftype])


def condition_mask(table: pa.Table, cond: Condition) -> pa.ChunkedArray:
    col = table.column(cond.column)
    if cond.op == "eq":
        return pc.equal(col, _scalar(cond.values[0], cond.type))
    if cond.op == "in":
        return pc.is_in(col, value_set=pa.array(cond.values, type=ARROW_TYPES[cond.type]))
    if cond.op == "gte":
        return pc.greater_equal(col, _scalar(cond.values[0], cond.type))
    if cond.op == "lte":
        return pc.less_equal(col, _scalar(cond.values[0], cond.type))
    lo, hi = (_scalar(v, cond.type) for v in cond.values)
    return pc.and_kleene(pc.greater_equal(col, lo), pc.less_equal(col, hi))


def mask_for(table: pa.Table, conditions: Sequence[Condition]) -> pa.ChunkedArray | None:
    """All conditions ANDed; a null comparison never matches. None means every row."""
    mask: pa.ChunkedArray | None = None
    for cond in conditions:
        m = condition_mask(table, cond)
        mask = m if mask is None else pc.and_kleene(mask, m)
    return None if mask is None else pc.fill_null(mask, False)


def project(rows: pa.Table, fields: Sequence[FieldSpec]) -> list[dict[str, Any]]:
    """Only the listed fields, renamed to their public names."""
    out = rows.select([f.column for f in fields]).rename_columns([f.name for f in fields])
    result: list[dict[str, Any]] = out.to_pylist()
    return result


@dataclass(frozen=True)
class Page:
    records: list[dict[str, Any]]
    next_offset: int | None


def page(
    table: pa.Table,
    conditions: Sequence[Condition],
    fields: Sequence[FieldSpec],
    *,
    offset: int,
    limit: int,
    index: Mapping[Any, int] | None = None,
    key_column: str | None = None,
) -> Page:
    """One page of matching rows in source order, and where the next page starts."""
    base = table
    candidates: pa.Array | None = None
    key_eq = next((c for c in conditions if c.column == key_column and c.op in ("eq", "in")), None)
    if key_eq is not None and index is not None:
        # Key lookups narrow to the indexed rows first instead of scanning the table.
        rows = sorted({index[v] for v in key_eq.values if v in index})
        candidates = pa.array(rows, type=pa.int64())
        base = table.take(candidates)
    mask = mask_for(base, conditions)
    if mask is None:
        matches = pa.array(range(offset, min(offset + limit + 1, base.num_rows)), pa.int64())
        has_more = base.num_rows > offset + limit
    else:
        positions = pc.indices_nonzero(mask)
        matches = positions.slice(offset, limit + 1)
        has_more = len(matches) > limit
    matches = matches.slice(0, limit)
    chosen = base.take(matches)
    records = project(chosen, fields)
    return Page(records, offset + limit if has_more else None)


def lookup(
    table: pa.Table, index: Mapping[Any, int], key: Any, fields: Sequence[FieldSpec]
) -> dict[str, Any] | None:
    row = index.get(key)
    if row is None:
        return None
    return project(table.slice(row, 1), fields)[0]
