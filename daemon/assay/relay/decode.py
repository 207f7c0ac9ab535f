"""Source bytes to a typed Arrow table under the declared schema, or a clear refusal.

Why strict: a registry answer is only as good as its types. A value that does not parse
as its declared type fails the whole load (CSV conversion is pyarrow's, with explicit
column types); a Parquet column of another type is refused unless the cast is lossless
(narrower integers, large strings, dictionary strings); nulls in non-nullable columns, a
null or duplicate primary key and non-finite numbers are refused. Nothing is coerced
silently. Error messages never quote a data value, since sources hold personal data.

Pure: decodes in-memory bytes; the snapshot module does the reading.
"""

from __future__ import annotations

import re

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from assay.core.errors import ConfigError
from assay.relay.config import Table

ARROW_TYPES: dict[str, pa.DataType] = {
    "string": pa.string(),
    "integer": pa.int64(),
    "number": pa.float64(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us", tz="UTC"),
}


class SourceInvalid(ConfigError):
    """A source file does not fit its declared schema; the load is refused."""

    code = "relay.source_invalid"


#: pyarrow's CSV errors, read only for their numbers: its text quotes the offending value
#: (``invalid value 'x'``) or the whole row, unquoted (``Expected 7 columns, got 8: H1,
#: M01,...``), and a reason reaches the log and ``/readyz``. So no part of its message is
#: passed on; each known shape becomes a fixed sentence naming a declared column or a
#: number, anything else one fixed sentence.
_FIELDS = re.compile(r"Expected ([0-9]{1,9}) columns, got ([0-9]{1,9})")
_COLUMN = re.compile(r"In CSV column #([0-9]{1,9}): ")
_NO_ZONE = re.compile(r"conversion error to timestamp[^:]*: expected a zone offset")


def _csv_reason(message: str, data: bytes, spec: Table, delimiter: str) -> str:
    fields = _FIELDS.search(message)
    if fields:
        return (
            f"a row has {fields.group(2)} fields where the header has {fields.group(1)} "
            "(or a quoted field is not closed)"
        )
    if message.startswith("Empty CSV file"):
        return "the file is empty"
    column = _COLUMN.match(message)
    if column is None:
        return "not readable as CSV"
    name = _declared_name(data, spec, delimiter, int(column.group(1)))
    declared = {c.name: c.type for c in spec.columns}.get(name or "")
    where = f"column {name!r}" if name else f"column #{int(column.group(1)) + 1}"
    if "invalid UTF8" in message:
        return f"{where} is not valid UTF-8"
    if _NO_ZONE.search(message):
        return f"{where} has a timestamp without a zone offset"
    return f"{where} has a value that does not parse as {declared or 'its declared type'}"


def _declared_name(data: bytes, spec: Table, delimiter: str, index: int) -> str | None:
    """The header's name at ``index`` if it is a declared column (ours to name), else None:
    a file without a header has a data row there."""
    try:
        header = pacsv.read_csv(
            pa.BufferReader(data),
            read_options=pacsv.ReadOptions(skip_rows_after_names=2**31 - 1),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
        ).column_names
    except pa.ArrowException:
        return None
    declared = {c.name for c in spec.columns}
    return header[index] if 0 <= index < len(header) and header[index] in declared else None


def _lossless(actual: pa.DataType, declared: str) -> bool:
    """Whether a Parquet column type may be cast to the declared type without loss."""
    if pa.types.is_dictionary(actual):
        return declared == "string" and (
            pa.types.is_string(actual.value_type) or pa.types.is_large_string(actual.value_type)
        )
    if declared == "string":
        return bool(pa.types.is_string(actual) or pa.types.is_large_string(actual))
    if declared == "integer":
        return bool(pa.types.is_integer(actual))  # checked per value by a safe cast
    if declared == "number":
        return bool(pa.types.is_floating(actual))
    if declared == "boolean":
        return bool(pa.types.is_boolean(actual))
    if declared == "date":
        return bool(pa.types.is_date(actual))
    if declared == "timestamp":
        return bool(pa.types.is_timestamp(actual) and actual.tz is not None)
    return False


def _csv(data: bytes, spec: Table, where: str, *, copy: bool = False) -> pa.Table:
    """CSV as files hold it, or (``copy``) as Postgres ``COPY ... (FORMAT csv)`` writes
    it: booleans ``t``/``f``, NULL unquoted empty, an empty string quoted ``""``."""
    declared = {c.name: ARROW_TYPES[c.type] for c in spec.columns}
    delimiter = "," if copy else spec.source.delimiter
    try:
        table = pacsv.read_csv(
            pa.BufferReader(data),
            read_options=pacsv.ReadOptions(use_threads=True, block_size=4 * 1024 * 1024),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(
                column_types=declared,
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=not copy,
                true_values=["t"] if copy else ["true"],
                false_values=["f"] if copy else ["false"],
                check_utf8=True,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        reason = _csv_reason(str(exc), data, spec, delimiter)
        raise SourceInvalid(f"{where}: {reason}", path=where) from None
    _check_columns(table.column_names, spec, where)
    return table


def _parquet(data: bytes, spec: Table, where: str) -> pa.Table:
    try:
        pf = pq.ParquetFile(pa.BufferReader(data))
        names = pf.schema_arrow.names
        _check_columns(names, spec, where)
        # Undeclared columns (when ignored) are never even decoded.
        table = pf.read(columns=[c.name for c in spec.columns])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError):
        # pyarrow's reason may quote bytes of the file: none of it is passed on.
        raise SourceInvalid(f"{where}: not readable as Parquet", path=where) from None
    for col in spec.columns:
        actual = table.schema.field(col.name).type
        if not _lossless(actual, col.type):
            raise SourceInvalid(
                f"{where}: column {col.name!r} is {actual}, declared {col.type}; "
                "refusing a lossy or guessed conversion",
                path=where,
            )
    return table


def _check_columns(names: list[str], spec: Table, where: str) -> None:
    if len(set(names)) != len(names):
        raise SourceInvalid(f"{where}: the source repeats a column name", path=where)
    present = set(names)
    missing = [c.name for c in spec.columns if c.name not in present]
    if missing:
        raise SourceInvalid(f"{where}: missing declared columns {missing}", path=where)
    declared = {c.name for c in spec.columns}
    extra = [i + 1 for i, name in enumerate(names) if name not in declared]
    if extra and not spec.ignore_extra_columns:
        # By position, not name: in a file without a header the "names" are a data row.
        raise SourceInvalid(
            f"{where}: undeclared columns at positions {extra[:20]} (declare them or set "
            "ignore_extra_columns)",
            path=where,
        )


def _conform(table: pa.Table, spec: Table, where: str) -> pa.Table:
    """Select and order the declared columns, cast losslessly, check nulls and the key."""
    arrays: list[pa.ChunkedArray] = []
    for col in spec.columns:
        arr = table.column(col.name)
        target = ARROW_TYPES[col.type]
        if arr.type != target:
            try:
                arr = arr.cast(target, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                # pyarrow names the value that would be lost, unquoted: not passed on.
                raise SourceInvalid(
                    f"{where}: column {col.name!r} does not fit {col.type} without loss",
                    path=where,
                ) from None
        nullable = col.nullable and col.name != spec.primary_key
        if not nullable and arr.null_count:
            raise SourceInvalid(
                f"{where}: column {col.name!r} has {arr.null_count} null values "
                "but is not nullable",
                path=where,
            )
        if (
            col.type == "number"
            and len(arr)
            and not pc.all(pc.or_kleene(pc.is_finite(arr), pc.is_null(arr))).as_py()
        ):
            raise SourceInvalid(f"{where}: column {col.name!r} has non-finite numbers", path=where)
        arrays.append(arr)
    out = pa.table(arrays, names=[c.name for c in spec.columns]).combine_chunks()
    key = out.column(spec.primary_key)
    if pc.count_distinct(key).as_py() != len(key):
        raise SourceInvalid(
            f"{where}: primary key {spec.primary_key!r} has duplicate values", path=where
        )
    return out


def decode(data: bytes, spec: Table, *, where: str) -> pa.Table:
    """Decode ``data`` as ``spec`` declares; ``where`` names the table in errors.

    Any other failure of pyarrow's (its exceptions are ``ValueError``, ``TypeError``,
    ``KeyError``... subclasses) is one fixed reason naming only its type: its text may
    quote the data, and this reason reaches the log, ``/readyz`` and the CLI."""
    fmt = spec.source.resolved_format()
    try:
        if fmt == "parquet":
            raw = _parquet(data, spec, where)
        else:
            raw = _csv(data, spec, where, copy=fmt == "postgres")
        return _conform(raw, spec, where)
    except SourceInvalid:
        raise
    except (pa.ArrowException, ValueError, TypeError, KeyError, IndexError, OverflowError) as exc:
        raise SourceInvalid(
            f"{where}: the source could not be decoded ({type(exc).__name__})", path=where
        ) from None
