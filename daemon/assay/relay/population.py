"""One grouping per population: what a source *is*, and when two are one population.

Why: two aggregates over one population share margins, so a coarse cell minus the
published fine cells gives back suppressed ones. The relay refuses a second aggregate
over a population another aggregate already groups, and must judge "the same
population" by what the sources hold, not by how their paths, keys or types are
spelled. Two kinds of evidence, kept apart because they promise different things:

*Exact* (``SourceIdentity.same_population``): the same file (device and inode, or real
path), the same bytes (SHA-256), or **the same identifier set**: some column that is
unique and non-null in each table holds the same set of values in both, compared as
canonical text (``canonical_text``: numbers by value, so ``1``, ``1.0``, ``"1"`` and
``"001"`` are one; text NFC-normalised, trimmed and lower-cased), under any column name
and either type. This is whatever column identifies the rows, declared key or not, so
the same rows keyed by another unique column, retyped by a spreadsheet, reordered,
re-quoted or converted between CSV and Parquet are caught, always. A row-number column
(``sequence_like``: contiguous integers, or one prefix and contiguous digits) is left out:
it says where a row is, not who it is, and two unrelated tables of one size share one.

*Estimated* (``row_overlap``, a heuristic with a threshold): for a subset, a superset or
two overlapping extracts, the identifier sets differ, so the rows themselves are
compared: over the columns both tables declare under one name, when those columns tell
rows apart (at least ``DISTINCT_SHARE`` of each table's rows are distinct over them), the
share of the smaller table's distinct rows found in the other, counted exactly. When
they do not, but a row number is among them (a minimal extract: ``person_id``,
``municipality``, ``sex``), rows line up by number and the share is counted beyond what
chance agreement of the other columns gives two unrelated tables numbered alike. At
``OVERLAP_SHARE`` or more it is refused. It misses what shares no column name (every
column renamed), an extract whose shared columns do not tell rows apart (only
dimensions, no ids or fine-grained values) and that shares no row number or was
renumbered, and overlaps under the threshold; overlapping whole cells can still be
differenced there. It may refuse two unrelated tables whose shared columns coincide by
chance on half their rows, or two numbered alike and sorted by the same dimensions (lined
up by number, sorted rows agree beyond chance), which is the safe way to be wrong.

Pure: values in, reasons out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

#: Refused when at least this share of the smaller table's distinct rows is in the other.
OVERLAP_SHARE = 0.5
#: Rows are compared only over columns on which this share of each table's rows differ.
DISTINCT_SHARE = 0.9

_NULL = "\x00null"
_DOMAIN = b"assay.relay.identifier-set.v1\x00"
_NUMERIC = r"^[+-]?[0-9]+(\.[0-9]+)?$"
_SEQUENCE = r"^(?P<prefix>[^0-9]*)(?P<digits>[0-9]{1,18})$"
_INT53 = 2**53


def _numeric_text(text: pa.Array) -> pa.Array:
    """Decimal strings by value: no sign ``+``, no leading or trailing zeros, no ``-0``."""
    out = pc.replace_substring_regex(text, r"^\+", "")
    out = pc.replace_substring_regex(out, r"^(-?)0+([0-9])", r"\1\2")
    out = pc.replace_substring_regex(out, r"^(-?[0-9]+)\.([0-9]*[1-9])0+$", r"\1.\2")
    out = pc.replace_substring_regex(out, r"^(-?[0-9]+)\.0+$", r"\1")
    return pc.replace_substring_regex(out, r"^-0$", "0")


def _float_text(values: pa.Array) -> pa.Array:
    """Whole floats as integers (``1.0`` is ``1``, like the integer and ``"1"``)."""
    whole = pc.and_kleene(
        pc.equal(pc.floor(values), values), pc.less(pc.abs(values), pa.scalar(float(_INT53)))
    )
    as_int = pc.cast(pc.if_else(whole, values, 0.0), pa.int64()).cast(pa.string())
    return pc.if_else(whole, as_int, values.cast(pa.string()))


def canonical_text(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One column as comparable text: equal values of any declared type are equal text."""
    values = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    kind = values.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        if pc.all(pc.string_is_ascii(values)).as_py() is not False:  # the fast, common path
            text = pc.ascii_lower(pc.ascii_trim_whitespace(values))
        else:
            text = pc.utf8_lower(pc.utf8_trim_whitespace(pc.utf8_normalize(values, "NFC")))
        text = text.cast(pa.string())
        numeric = pc.fill_null(pc.match_substring_regex(text, _NUMERIC), False)
        if pc.any(numeric).as_py():
            text = pc.if_else(numeric, _numeric_text(text), text)
    elif pa.types.is_floating(kind):
        text = _float_text(values)
    elif pa.types.is_timestamp(kind):  # one zone (UTC) and unit (us) after decode: the count
        text = values.cast(pa.int64()).cast(pa.string())
    else:  # integers, booleans, dates: Arrow's own text, one per value
        text = values.cast(pa.string())
    return pc.fill_null(text, _NULL)


def _unique(values: pa.Array) -> bool:
    return bool(values.null_count == 0 and pc.count_distinct(values).as_py() == len(values))


def sequence_like(values: pa.Array) -> bool:
    """A unique column of row numbers: contiguous integers, or one prefix before
    contiguous digits (``P00000001``...). It places rows; it does not identify them."""
    if len(values) == 0:
        return False
    kind = values.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        if pa.types.is_floating(kind) and not pc.all(pc.equal(pc.floor(values), values)).as_py():
            return False
        low, high = pc.min_max(values).values()
        return bool(high.as_py() - low.as_py() + 1 == len(values))
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        return False
    parts = pc.extract_regex(values, _SEQUENCE)
    if parts.null_count:
        return False
    if pc.count_distinct(parts.field("prefix")).as_py() != 1:
        return False
    numbers = pc.cast(parts.field("digits"), pa.int64())
    low, high = pc.min_max(numbers).values()
    return bool(high.as_py() - low.as_py() + 1 == len(values))


def _set_digest(text: pa.Array) -> str:
    """SHA-256 over the sorted values, each prefixed by its length (8 bytes)."""
    ordered = pc.take(text, pc.array_sort_indices(text))  # a fresh array: offsets from 0
    lengths = pc.binary_length(ordered).cast(pa.int64())
    total = pc.sum(lengths).as_py() or 0
    h = hashlib.sha256(_DOMAIN)
    h.update(len(ordered).to_bytes(8, "big"))
    h.update(memoryview(lengths.buffers()[1])[: 8 * len(ordered)])
    if total:
        h.update(memoryview(ordered.buffers()[2])[:total])
    return "sha256:" + h.hexdigest()


@dataclass(frozen=True)
class Fingerprint:
    """Who a table's rows are, as far as the exact check can tell: the identifier set of
    every unique, non-null, non-row-number column, and which columns are row numbers."""

    identifiers: tuple[tuple[str, str], ...] = ()
    sequences: frozenset[str] = field(default_factory=frozenset)


def fingerprint(table: pa.Table) -> Fingerprint:
    """Blocking (a scan per column): run it where the table was decoded."""
    identifiers: list[tuple[str, str]] = []
    sequences: set[str] = set()
    for name in table.column_names:
        values = table.column(name).combine_chunks()
        if not _unique(values):
            continue
        if sequence_like(values):
            sequences.add(name)
            continue
        identifiers.append((name, _set_digest(canonical_text(values))))
    return Fingerprint(tuple(identifiers), frozenset(sequences))


@dataclass(frozen=True)
class SourceIdentity:
    """What a source *is*, not what its path says: the file it resolves to (device and
    inode, so a symlink, a hard link and every spelling of one path are one file), and
    once loaded, the SHA-256 of its bytes and its identifier sets (``Fingerprint``).
    ``None`` is not known yet: a static check sees only the file system. A database
    source has no file: its ``locator`` is the server, database and relation the server
    itself reported (``pgread``), so two spellings of one relation are one population."""

    file: tuple[int, int] | None = None
    real_path: str | None = None
    content: str | None = None
    identifiers: tuple[tuple[str, str], ...] | None = None
    locator: str | None = None

    def same_population(self, other: SourceIdentity) -> str | None:
        """Why ``other`` is certainly the same population as this one, or None."""
        reasons = (
            ("file", "the same file as"),
            ("real_path", "the same file as"),
            ("content", "a byte-identical copy of"),
            ("locator", "the same database relation as"),
        )
        for attr, why in reasons:
            mine, theirs = getattr(self, attr), getattr(other, attr)
            if mine is not None and mine == theirs:
                return why
        theirs_by_digest = {digest: name for name, digest in other.identifiers or ()}
        for name, digest in self.identifiers or ():
            if digest in theirs_by_digest:
                return (
                    f"the same records (column {name!r} holds exactly the identifiers of "
                    f"column {theirs_by_digest[digest]!r}) as"
                )
        return None


def population_problems(sources: Sequence[tuple[str, str, SourceIdentity]]) -> list[str]:
    """One grouping per population: ``path: problem`` for every aggregate whose source is
    a population an earlier aggregate already groups. ``sources`` holds
    ``(aggregate path, table name, identity)``."""
    problems: list[str] = []
    for i, (where, label, ident) in enumerate(sources):
        for prev_where, prev_label, prev in sources[:i]:
            why = ident.same_population(prev)
            if why is not None:
                problems.append(same_population_problem(where, label, why, prev_label, prev_where))
                break
    return problems


def same_population_problem(
    where: str, label: str, why: str, other_label: str, other_where: str
) -> str:
    return (
        f"{where}.source_entity: table {label} is {why} {other_label}, the population "
        f"{other_where} already aggregates; two groupings of one population let a caller "
        "recover suppressed cells by subtraction"
    )


def _row_text(table: pa.Table, columns: Sequence[str]) -> pa.Array:
    """Each row over ``columns`` as one text (canonical values joined by U+001F). A value
    holding U+001F could make two rows one text: that only merges rows, so the estimate
    errs towards refusing."""
    texts = [canonical_text(table.column(c)) for c in columns]
    return texts[0] if len(texts) == 1 else pc.binary_join_element_wise(*texts, "\x1f")


def _chance(a: pa.Table, b: pa.Table, columns: Sequence[str]) -> float:
    """How often a row of ``a`` and a row of ``b`` agree on ``columns`` by chance alone:
    the sum over value combinations of their shares in each table."""
    counts_a = pc.value_counts(_row_text(a, columns))
    counts_b = pc.value_counts(_row_text(b, columns))
    where = pc.index_in(counts_a.field("values"), value_set=counts_b.field("values"))
    hit = pc.is_valid(where)
    theirs = pc.take(counts_b.field("counts"), pc.filter(where, hit))
    mine = pc.filter(counts_a.field("counts"), hit)
    both = pc.sum(pc.multiply(mine.cast(pa.float64()), theirs.cast(pa.float64()))).as_py()
    return float(both or 0.0) / float(a.num_rows * b.num_rows)


def row_overlap(
    a: pa.Table, a_fp: Fingerprint, b: pa.Table, b_fp: Fingerprint
) -> tuple[float, list[str]] | None:
    """The share of the smaller table's distinct rows that the other holds, over the
    columns both declare, and those columns; None when rows cannot be compared.

    1. The columns both tables declare by name. Row numbers (``Fingerprint.sequences``)
       carry no identity of their own: with none of the other columns, no comparison.
    2. When the other columns tell rows apart (at least ``DISTINCT_SHARE`` of each
       table's rows are distinct over them), rows are compared over those alone.
    3. Else, with a row number both declare, rows are lined up by it: the row number
       and the other columns. Those must tell rows apart too (step 2's rule).
    4. The share of the smaller table's distinct rows found in the other, counted.
    5. Lined up by a row number (step 3), two unrelated tables numbered alike agree
       wherever their other values agree by chance: the share is counted beyond
       chance, ``(share - chance) / (1 - chance)``, with ``chance`` from each table's
       own value shares (``_chance``). Step 2 needs no such correction: its columns
       already tell rows apart, so chance agreement there is agreement of whole rows.
    """
    names = set(b.column_names)
    shared = [c for c in a.column_names if c in names]
    row_numbers = a_fp.sequences | b_fp.sequences
    values = [c for c in shared if c not in row_numbers]
    if not values or not a.num_rows or not b.num_rows:
        return None
    found = _distinct_rows(a, b, values)
    lined_up = False
    if found is None and len(values) < len(shared):
        found, lined_up = _distinct_rows(a, b, shared), True
    if found is None:
        return None
    small, large = found
    share = (pc.sum(pc.is_in(small, value_set=large)).as_py() or 0) / len(small)
    if lined_up:
        chance = _chance(a, b, values)
        share = 0.0 if chance >= 1 else max(0.0, (share - chance) / (1 - chance))
        return share, shared
    return share, values


def _distinct_rows(
    a: pa.Table, b: pa.Table, columns: Sequence[str]
) -> tuple[pa.Array, pa.Array] | None:
    """Each table's distinct rows over ``columns``, the smaller first; None unless the
    columns tell rows apart in both (``DISTINCT_SHARE``)."""
    rows_a, rows_b = pc.unique(_row_text(a, columns)), pc.unique(_row_text(b, columns))
    for rows, table in ((rows_a, a), (rows_b, b)):
        if len(rows) < DISTINCT_SHARE * table.num_rows:
            return None
    small, large = sorted((rows_a, rows_b), key=len)
    return small, large


def overlap_reason(a: pa.Table, a_fp: Fingerprint, b: pa.Table, b_fp: Fingerprint) -> str | None:
    """Why ``a`` is estimated to be much of ``b``'s population (``row_overlap`` at or
    over ``OVERLAP_SHARE``), or None."""
    found = row_overlap(a, a_fp, b, b_fp)
    if found is None or found[0] < OVERLAP_SHARE:
        return None
    share, shared = found
    columns = ", ".join(shared[:8]) + (", ..." if len(shared) > 8 else "")
    return (
        f"largely the same rows ({share:.0%} of the smaller table's distinct rows, over "
        f"the shared columns {columns}: a subset, superset or overlapping extract) as"
    )
