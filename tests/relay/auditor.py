"""A statistical disclosure auditor for the relay's aggregates: exact linear recovery.

The model. Each record ``r`` carries unknowns: ``u_r`` (it exists: 1 in every row count),
and for each measured field ``f`` ``p_fr`` (it has a value: 1 in the field's count) and
``v_fr`` (the value, in exact integer units: 0 when null). Every number an answer
publishes is then a linear function of these unknowns over a set of records, which the
auditor works out on its own (its own filter evaluation and grouping of the raw rows):

- a row count is ``sum u``, a field's count ``sum p``, a sum ``sum v``, over the group's rows;
- an average ``a = s / n`` is not linear, but publishing it publishes the linear relation
  ``n * sum v - s * sum p = 0`` (with the exact rational ``s / n``: a float average pins the
  ratio of two bounded integers), so an average beside a count gives the sum, and an
  average beside averages in ``totals`` gives a count; a total is the same functions over
  the union of the groups it says it adds up.

Every published number is checked to equal its function's value on the real rows, so a
number computed over other rows than the auditor assumes fails the audit, never escapes it.
The auditor also assumes the caller knows every published group's row count, even when no
indicator shows it.

The secrets are fixed by the rules, not by the answer: for every cell of the full table
(all declared dimensions), a cell with fewer than k rows keeps its row count and every
field's count, sum and average secret; in a larger cell, a field with fewer than k values,
or 1..k-1 rows without one, keeps its count, sum and average secret; any value an answer
masks beyond that is a secret too. The verdict: no secret, and no nonzero linear
combination of secrets, lies in the span of the published functions (a rank test, exact
over the rationals: ranks over two 31-bit prime fields, which can only undercount the
rational rank, and any prime that finds a dependence reports it). Markers and counts
(``suppressed``, ``suppressed_groups``, ``suppressed_values``) are checked to be functions of
which cells and fields were suppressed, and each such fact to leave every secret at least
two possible values; with no combination of secrets in the span, no published number
narrows those ranges further by linear reasoning.

What it does not prove: recovery by nonlinear or integer reasoning beyond these intervals
(e.g. bounds from nonnegativity across cells, or integrality of an average's ratio),
dominance of a sum by one contributor, answers from two snapshots, and anything a caller
reads through the records routes. It checks the queries it is given, on the tables it is
given: a bounded search, not a proof for every table.

Columns are merged exactly: records that fall in the same sets (every published group,
total and secret cell) have identical columns, and dropping duplicate columns keeps every
row dependence, so the matrix has one column per feature per class of records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from math import isclose, lcm
from typing import Any

import numpy as np

from assay.relay.config import Aggregate

PRIMES = (2147483647, 2147483629)
Row = tuple[tuple[str, int, int], ...]  # ((feature, set id, coefficient), ...)


class Leak(AssertionError):
    """The auditor found a published number that gives a suppressed value back."""


def _exact(values: Sequence[Any]) -> tuple[list[int | None], int]:
    """A column's values as integers in one exact unit (cents for two decimals)."""
    fracs = [None if v is None else Fraction(Decimal(repr(v))) for v in values]
    scale = lcm(1, *(f.denominator for f in fracs if f is not None))
    return [None if f is None else int(f * scale) for f in fracs], scale


def _matches(value: Any, op: str, args: Sequence[Any]) -> bool:
    """The auditor's own reading of a filter: a null never matches."""
    if value is None:
        return False
    if op == "eq":
        return bool(value == args[0])
    if op == "in":
        return value in args
    if op == "gte":
        return bool(value >= args[0])
    if op == "lte":
        return bool(value <= args[0])
    return bool(args[0] <= value <= args[1])


@dataclass
class _Secret:
    what: str
    row: Row


@dataclass
class Auditor:
    """Collects answers over one snapshot and decides whether any suppressed value leaked.

    ``columns`` holds the raw rows by public field name (None is null).
    """

    columns: Mapping[str, Sequence[Any]]
    published: list[tuple[str, Row]] = field(default_factory=list)
    secrets: list[_Secret] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    _sets: dict[bytes, int] = field(default_factory=dict)
    _members: list[np.ndarray] = field(default_factory=list)
    _exact: dict[str, tuple[np.ndarray, np.ndarray, int]] = field(default_factory=dict)
    _by_value: dict[str, dict[Any, np.ndarray]] = field(default_factory=dict)
    _aggs: dict[str, Aggregate] = field(default_factory=dict)
    _codes: dict[str, tuple[np.ndarray, list[tuple[Any, ...]]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.n = len(next(iter(self.columns.values())))

    # --- sets and functions -------------------------------------------------------------

    def _set(self, rows: np.ndarray) -> int:
        arr = np.unique(rows.astype(np.int64))
        key = arr.tobytes()
        if key not in self._sets:
            self._sets[key] = len(self._members)
            self._members.append(arr)
        return self._sets[key]

    def _values(self, f: str) -> tuple[np.ndarray, np.ndarray, int]:
        """(has a value, exact value in integer units or 0, the unit) for every record."""
        if f not in self._exact:
            exact, scale = _exact(self.columns[f])
            present = np.array([v is not None for v in exact], dtype=bool)
            # Python integers: sums stay exact however large the values are.
            values = np.array([0 if v is None else v for v in exact], dtype=object)
            self._exact[f] = (present, values, scale)
        return self._exact[f]

    def truth(self, rows: np.ndarray, f: str) -> tuple[int, int]:
        """(count, exact sum) of field ``f`` over ``rows``."""
        present, values, _scale = self._values(f)
        return int(present[rows].sum()), int(values[rows].sum())

    def _matching(self, conditions: Sequence[tuple[str, str, Sequence[Any]]]) -> np.ndarray:
        """The records every condition matches, decided on each distinct value once."""
        mask = np.ones(self.n, dtype=bool)
        for f, op, args in conditions:
            if f not in self._by_value:
                groups: dict[Any, list[int]] = {}
                for r, v in enumerate(self.columns[f]):
                    groups.setdefault(v, []).append(r)
                self._by_value[f] = {v: np.array(rs, dtype=np.int64) for v, rs in groups.items()}
            hit = np.zeros(self.n, dtype=bool)
            for v, rs in self._by_value[f].items():
                if _matches(v, op, args):
                    hit[rs] = True
            mask &= hit
        return np.nonzero(mask)[0]

    def _ratio_row(self, sid: int, f: str, n: int, s: int) -> Row:
        return ((f"v:{f}", sid, n), (f"p:{f}", sid, -s))

    def _fn(self, fn: str, f: str | None, sid: int, rows: np.ndarray) -> tuple[Row, Any]:
        """An indicator over ``rows`` as a linear row and the value it must publish."""
        if f is None:
            return (("u", sid, 1),), len(rows)
        n, s = self.truth(rows, f)
        if fn == "count":
            return ((f"p:{f}", sid, 1),), n
        scale = self._values(f)[2]
        if fn == "sum":
            return ((f"v:{f}", sid, 1),), Fraction(s, scale)
        return self._ratio_row(sid, f, n, s), (Fraction(s, n * scale) if n else None)

    def _publish(self, what: str, row: Row, expected: Any, got: Any) -> None:
        ok = expected is not None and (
            got == expected if isinstance(got, int) else isclose(got, expected, rel_tol=1e-9)
        )
        if not ok:
            raise Leak(f"{what}: published {got!r}, but its rows give {expected!r}")
        self.published.append((what, row))

    def _keep_secret(self, what: str, fn: str, f: str | None, sid: int, rows: np.ndarray) -> None:
        row, _value = self._fn(fn, f, sid, rows)
        if fn == "avg" and f is not None and self.truth(rows, f)[0] == 0:
            row = ((f"p:{f}", sid, 1),)  # an average of nothing hides only that count
        self.secrets.append(_Secret(what, row))

    # --- the fixed table's secrets -----------------------------------------------------

    def add_aggregate(self, agg: Aggregate) -> None:
        """Register an aggregate and the secrets its rules promise over the full table."""
        self._aggs[agg.id] = agg
        k = agg.disclosure_control.min_group_size
        measured = sorted({i.field for i in agg.indicators if i.field is not None})
        for key, rows in self._cells(agg, np.arange(self.n)).items():
            sid = self._set(rows)
            label = f"{agg.id}{key}"
            if len(rows) < k:
                self.secrets.append(_Secret(f"{label} rows", (("u", sid, 1),)))
                for f in measured:
                    for fn in ("count", "sum", "avg"):
                        self._keep_secret(f"{label} {fn}({f})", fn, f, sid, rows)
                continue
            for f in measured:
                n, _s = self.truth(rows, f)
                if n < k or 0 < len(rows) - n < k:
                    for fn in ("count", "sum", "avg"):
                        self._keep_secret(f"{label} {fn}({f})", fn, f, sid, rows)

    def _cells(self, agg: Aggregate, rows: np.ndarray) -> dict[tuple[Any, ...], np.ndarray]:
        """``rows`` grouped by their key over all of the aggregate's dimensions."""
        if agg.id not in self._codes:
            codes: dict[tuple[Any, ...], int] = {}
            per_record = [
                codes.setdefault(key, len(codes))
                for key in zip(*(self.columns[d] for d in agg.dimensions), strict=True)
            ]
            self._codes[agg.id] = (np.array(per_record, dtype=np.int64), list(codes))
        code, keys = self._codes[agg.id]
        sub = code[rows]
        order = np.argsort(sub, kind="stable")
        bounds = np.flatnonzero(np.diff(sub[order])) + 1
        return {
            keys[int(sub[part[0]])]: rows[part] for part in np.split(order, bounds) if part.size
        }

    # --- one answer ------------------------------------------------------------------

    def observe(
        self,
        agg_id: str,
        conditions: Sequence[tuple[str, str, Sequence[Any]]],
        answer: Mapping[str, Any],
    ) -> None:
        """Express every number in one answer as a linear function of the records.

        ``conditions`` are ``(field, op, values)`` as the planner parsed them; ``answer``
        has ``groups``, ``suppressed_groups``, ``suppressed_values`` and ``totals``.
        """
        agg = self._aggs[agg_id]
        k = agg.disclosure_control.min_group_size
        cells = self._cells(agg, self._matching(conditions))
        where = f"{agg_id}?{conditions}"
        # 1. The groups are exactly the cells the filter selects: small ones omitted or
        #    marked, so a marker or an absence says only "1..k-1 rows" (k >= 3: two or more).
        small = {key for key, rows in cells.items() if len(rows) < k}
        keys = [tuple(g[d] for d in agg.dimensions) for g in answer["groups"]]
        marked = {key for key, g in zip(keys, answer["groups"], strict=True) if g.get("suppressed")}
        expected = set(cells) - (small if agg.disclosure_control.suppression == "omit" else set())
        if len(keys) != len(set(keys)) or set(keys) != expected or marked != (small & set(keys)):
            raise Leak(f"{where}: the groups are not exactly the selected cells")
        if answer["suppressed_groups"] != len(small):
            raise Leak(f"{where}: suppressed_groups is not the number of small cells")
        if k < 3:
            raise Leak(f"{where}: k={k}: a suppressed cell is known to hold exactly 1 row")
        masked = 0
        union: dict[str, list[np.ndarray]] = {}
        for key, g in zip(keys, answer["groups"], strict=True):
            rows = cells[key]
            sid = self._set(rows)
            if key in small:
                if any(g[i.id] is not None for i in agg.indicators):
                    raise Leak(f"{where}: small cell {key} shows a value")
                continue
            self._publish(f"{agg_id}{key} rows (known)", (("u", sid, 1),), len(rows), len(rows))
            for ind in agg.indicators:
                what = f"{agg_id}{key} {ind.function}({ind.field or '*'})"
                if g[ind.id] is None:
                    masked += 1
                    self._keep_secret(what, ind.function, ind.field, sid, rows)
                    self._interval(what, ind.field, rows, k)
                    continue
                row, value = self._fn(ind.function, ind.field, sid, rows)
                self._publish(what, row, value, g[ind.id])
                union.setdefault(ind.id, []).append(rows)
        if answer["suppressed_values"] != masked:
            raise Leak(f"{where}: suppressed_values is not the number of masked values")
        # 2. Totals: over the union of the groups whose value each one says it adds up.
        for ind in agg.indicators:
            got = answer["totals"].get(ind.id)
            parts = union.get(ind.id, [])
            rows = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
            if not rows.size:
                if got is not None:
                    raise Leak(f"{where}: total {ind.id} has no published cell under it")
                continue
            row, value = self._fn(ind.function, ind.field, self._set(rows), rows)
            self._publish(f"{where} total {ind.id}", row, value, got)

    def _interval(self, what: str, f: str | None, rows: np.ndarray, k: int) -> None:
        """A masked field in a published cell says ``n < k or 0 < rows - n < k``; that
        must leave at least two counts possible."""
        if f is None:
            return  # a published cell's row count is assumed known anyway
        size = len(rows)
        possible = [n for n in range(size + 1) if n < k or 0 < size - n < k]
        if len(possible) < 2:
            raise Leak(f"{what}: its mask alone tells the value")
        self.facts.append(what)

    # --- the verdict -----------------------------------------------------------------

    def _matrix(
        self,
        rows: Sequence[Row],
        classes: np.ndarray,
        in_set: list[np.ndarray],
        features: dict[str, int],
        p: int,
    ) -> np.ndarray:
        n_classes = int(classes.max()) + 1 if classes.size else 1
        out = np.zeros((len(rows), len(features) * n_classes), dtype=np.int64)
        for i, row in enumerate(rows):
            for feat, sid, coef in row:
                cols = features[feat] * n_classes + in_set[sid]
                out[i, cols] = (out[i, cols] + coef % p) % p
        return out

    def verdict(self) -> dict[str, int]:
        """Raise ``Leak`` naming the first recovered secret; else a summary of the audit."""
        membership = np.zeros((self.n, len(self._members)), dtype=bool)
        for sid, members in enumerate(self._members):
            membership[members, sid] = True
        _, classes = np.unique(np.packbits(membership, axis=1), axis=0, return_inverse=True)
        classes = classes.reshape(-1)
        in_set = [np.unique(classes[m]) for m in self._members]
        feats = sorted(
            {f for _, row in self.published for f, _, _ in row}
            | {f for s in self.secrets for f, _, _ in s.row}
        )
        features = {f: i for i, f in enumerate(feats)}
        pub_rows = list(dict.fromkeys(row for _, row in self.published))
        sec_rows = [s.row for s in self.secrets]
        summary = {
            "published": len(self.published),
            "functions": len(pub_rows),
            "secrets": len(sec_rows),
            "classes": int(classes.max()) + 1,
        }
        if not sec_rows:
            return summary
        for p in PRIMES:
            pub = self._matrix(pub_rows, classes, in_set, features, p)
            sec = self._matrix(sec_rows, classes, in_set, features, p)
            basis, pivots = rref(pub, p)
            for secret, hit in zip(self.secrets, in_span(basis, pivots, sec, p), strict=True):
                if hit:
                    raise Leak(f"{secret.what} is a linear function of the published numbers")
            both = len(rref(np.vstack([pub, sec]), p)[1])
            overlap = len(pivots) + len(rref(sec, p)[1]) - both
            if overlap:
                raise Leak(f"{overlap} combination(s) of suppressed values are published")
            summary[f"rank_mod_{p}"] = len(pivots)
        return summary


def rref(m: np.ndarray, p: int) -> tuple[np.ndarray, list[int]]:
    """Reduced row echelon form over GF(p) (p < 2**31, so products fit in int64)."""
    a = m.copy() % p
    pivots: list[int] = []
    r = 0
    for c in range(a.shape[1]):
        if r == a.shape[0]:
            break
        nz = np.nonzero(a[r:, c])[0]
        if nz.size == 0:
            continue
        i = r + int(nz[0])
        if i != r:
            a[[r, i]] = a[[i, r]]
        a[r] = (a[r] * pow(int(a[r, c]), p - 2, p)) % p
        col = a[:, c].copy()
        col[r] = 0
        hit = np.nonzero(col)[0]
        if hit.size:
            a[hit] = (a[hit] - (col[hit, None] * a[r]) % p) % p
        pivots.append(c)
        r += 1
    return a[:r], pivots


def in_span(basis: np.ndarray, pivots: Sequence[int], vectors: np.ndarray, p: int) -> list[bool]:
    """Which rows of ``vectors`` are combinations of the rows of ``basis`` (an RREF)."""
    t = vectors.copy() % p
    for i, c in enumerate(pivots):
        coef = t[:, c].copy()
        t = (t - (coef[:, None] * basis[i]) % p) % p
    return [not row.any() for row in t]
