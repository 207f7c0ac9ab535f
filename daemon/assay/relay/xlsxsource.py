"""XLSX sources: one named sheet's typed cells to the declared schema, or a typed refusal.

Why openpyxl (read-only, formulas kept): it is the parser that tells a formula from a
value (``docs/benchmarks.md`` has the measurement against python-calamine, which is
faster but returns a formula's cached value as if it were data and cannot say a cell held
a formula). One parser decides everything here: Python's ``zipfile`` reads the archive
(its central directory gives the sizes checked before any part is inflated, and it stops
every part at its declared size and checks its CRC, so a lying size is a refusal, not a
bomb), and openpyxl's own worksheet parser gives the cells, their kinds and the merged
ranges; nothing here scans the XML by hand. With ``defusedxml`` installed openpyxl
refuses any DTD, so entity expansion cannot run.

XLSX cells are typed, so the rules are stricter than for CSV text: a number is not
accepted in a string column nor text in a numeric, boolean or date column (a registry
whose ids lost their leading zeros, or whose numbers are text, is refused, not guessed),
booleans must be boolean cells, dates must be date-formatted cells at midnight, and
timestamps must be text with a zone offset (Excel date-times have no zone). The table is
then conformed by the same code as CSV and Parquet (``decode._conform``): nulls, the
primary key, non-finite numbers. Refusals carry a stable code (``CODES``) and name the
table, column and cell coordinate, never a value.

Blocking and CPU-bound: the snapshot module runs it in a worker thread.
"""

from __future__ import annotations

import datetime as dt
import io
import warnings
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import defusedxml  # type: ignore[import-untyped]  # noqa: F401  (openpyxl: no DTDs with it)
import openpyxl
import openpyxl.xml
import pyarrow as pa
from openpyxl.utils.datetime import WINDOWS_EPOCH
from openpyxl.worksheet._read_only import ReadOnlyWorksheet
from openpyxl.worksheet._reader import WorkSheetParser

from assay.relay.cellrange import CellRange, column_letters
from assay.relay.config import Table
from assay.relay.decode import ARROW_TYPES, SourceInvalid, _check_columns, _conform

# No entity expansion in a workbook part: openpyxl parses through defusedxml only when it
# found it at import (T38); without it, refuse to load rather than parse unsafely.
if not openpyxl.xml.DEFUSEDXML:  # pragma: no cover - defusedxml is a declared dependency
    raise ImportError("openpyxl does not see defusedxml: XLSX sources would expand entities")

#: openpyxl warns with cell values in the text (e.g. an out-of-range date serial); those
#: cells are refused anyway, and a source's values never reach the log.
warnings.filterwarnings("ignore", module=r"openpyxl(\..*)?")

#: Every stable refusal code of an XLSX load (documented in docs/relay.md).
CODES: dict[str, str] = {
    "relay.xlsx_too_large": "the archive's parts inflate past max_source_bytes",
    "relay.xlsx_unreadable": "not a readable workbook (zip, XML, CRC, DTD, cell order)",
    "relay.xlsx_sheet_missing": "no worksheet of the configured name",
    "relay.xlsx_sheet_hidden": "the configured sheet is hidden or very hidden",
    "relay.xlsx_external_link": "the workbook links to other workbooks",
    "relay.xlsx_merged_cells": "a merged range overlaps the header or data cells",
    "relay.xlsx_formula": "a header or data cell holds a formula",
    "relay.xlsx_error_cell": "a header or data cell holds an error (#DIV/0!, #N/A, ...)",
    "relay.xlsx_type_mismatch": "a cell's kind does not fit its column's declared type",
    "relay.xlsx_date_ambiguous": "a date before 1900-03-01 in the 1900 date system",
    "relay.xlsx_header_mismatch": "the header row does not name the declared columns",
    "relay.xlsx_range_outside_sheet": "the header row or data columns lie outside the sheet",
}
#: A workbook has a few dozen parts; a bound keeps the central directory small.
MAX_PARTS = 10_000
#: Rows gathered as Python values before they become Arrow arrays (bounds the peak).
CHUNK_ROWS = 65_536
#: The largest integer a double (every XLSX number) holds exactly.
EXACT_INT = 2**53
_MARCH_1900 = dt.date(1900, 3, 1)
_KIND = {"n": "number", "s": "text", "b": "boolean", "d": "date", "e": "error", "f": "formula"}


class XlsxInvalid(SourceInvalid):
    """An XLSX source is refused; ``code`` is one of ``CODES``."""

    code = "relay.xlsx_unreadable"


def _refuse(code: str, where: str, detail: str) -> XlsxInvalid:
    assert code in CODES, code
    return XlsxInvalid(f"{where}: {detail} ({code})", code=code, path=where, reasons=[code])


def check_archive(data: bytes, max_bytes: int, where: str) -> None:
    """Refuse an archive before any part is inflated: sizes from the central directory."""
    try:
        # 1. The central directory parses (zipfile reads only it here).
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as exc:
        detail = f"not a zip archive ({type(exc).__name__})"
        raise _refuse("relay.xlsx_unreadable", where, detail) from None
    # 2. Bounded part count, one entry per name (readers disagree on which duplicate wins).
    if len(infos) > MAX_PARTS:
        raise _refuse("relay.xlsx_unreadable", where, f"more than {MAX_PARTS} parts")
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        raise _refuse("relay.xlsx_unreadable", where, "the archive repeats a part name")
    # 3. Only what Excel writes: stored or deflated, never encrypted.
    for info in infos:
        if info.flag_bits & 0x1:
            raise _refuse("relay.xlsx_unreadable", where, "the archive has an encrypted part")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _refuse("relay.xlsx_unreadable", where, "a part uses an unusual compression")
    # 4. The declared inflated total is within the source cap. zipfile stops each part at
    #    its declared size and checks its CRC, so the declaration binds what is inflated.
    total = sum(i.file_size for i in infos)
    if total > max_bytes:
        raise _refuse(
            "relay.xlsx_too_large",
            where,
            f"the parts inflate to {total} bytes, over the cap of {max_bytes}",
        )


@dataclass
class _Columns:
    """The declared columns' values, gathered in chunks of Arrow arrays."""

    spec: Table
    where: str
    chunks: dict[str, list[pa.Array]] = field(default_factory=dict)
    pending: dict[str, list[Any]] = field(default_factory=dict)
    rows: int = 0

    def __post_init__(self) -> None:
        for c in self.spec.columns:
            self.chunks[c.name] = []
            self.pending[c.name] = []

    def add(self, values: dict[str, Any]) -> None:
        for name, bucket in self.pending.items():
            bucket.append(values.get(name))
        self.rows += 1
        if self.rows % CHUNK_ROWS == 0:
            self.flush()

    def flush(self) -> None:
        for col in self.spec.columns:
            target = pa.string() if col.type == "timestamp" else ARROW_TYPES[col.type]
            try:
                self.chunks[col.name].append(pa.array(self.pending[col.name], type=target))
            except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
                raise _refuse(
                    "relay.xlsx_type_mismatch",
                    self.where,
                    f"column {col.name!r} has a value out of range for {col.type}",
                ) from None
            self.pending[col.name] = []

    def table(self) -> pa.Table:
        self.flush()
        arrays = []
        for col in self.spec.columns:
            target = pa.string() if col.type == "timestamp" else ARROW_TYPES[col.type]
            arrays.append(pa.chunked_array(self.chunks[col.name], type=target))
        return pa.table(arrays, names=[c.name for c in self.spec.columns])


Converter = Callable[[str, Any], Any]


class _Mismatch(Exception):
    """A cell's kind does not fit; carries what the cell was, never its value."""

    def __init__(self, kind: str, why: str = "") -> None:
        super().__init__(kind)
        self.kind = kind
        self.why = why


def _string(kind: str, value: Any) -> Any:
    if kind != "s":
        raise _Mismatch(kind, "store it as text in the workbook")
    return value or None  # empty text is null, as an empty CSV field is


def _integer(kind: str, value: Any) -> Any:
    if kind != "n":
        raise _Mismatch(kind)
    if isinstance(value, int):
        return value
    if value.is_integer() and abs(value) <= EXACT_INT:
        return int(value)
    raise _Mismatch(kind, "not a whole number")


def _number(kind: str, value: Any) -> Any:
    if kind != "n":
        raise _Mismatch(kind)
    return float(value)


def _boolean(kind: str, value: Any) -> Any:
    if kind != "b":
        raise _Mismatch(kind, "needs a TRUE/FALSE cell")
    return bool(value)


def _timestamp(kind: str, value: Any) -> Any:
    if kind != "s":
        raise _Mismatch(kind, "Excel date-times have no zone: write ISO 8601 text with an offset")
    return value or None


def _date(kind: str, value: Any) -> Any:
    if kind != "d":
        raise _Mismatch(kind, "needs a date-formatted cell")
    if isinstance(value, dt.datetime):
        if value.time() != dt.time(0):
            raise _Mismatch("date-time", "a date column takes whole dates")
        return value.date()
    if isinstance(value, dt.date):
        return value
    raise _Mismatch("time or duration")


CONVERTERS: dict[str, Converter] = {
    "string": _string,
    "integer": _integer,
    "number": _number,
    "boolean": _boolean,
    "date": _date,
    "timestamp": _timestamp,
}


@dataclass
class _Sheet:
    """What one pass over the sheet found: the header, the typed columns, the extent."""

    header: dict[int, str] | None = None
    header_problem: tuple[str, str] | None = None
    #: The header's columns (the range's, or the header cells' own span).
    span: range = range(0)
    extent_row: int = 0
    extent_col: int = 0


def _rows(parser: WorkSheetParser, where: str) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """The parser's rows, refused unless rows and cells come in strictly increasing order
    (openpyxl's own row filler would drop a repeated or out-of-order row silently)."""
    last_row = 0
    for number, cells in parser.parse():
        if number <= last_row:
            raise _refuse("relay.xlsx_unreadable", where, f"row {number} repeated or out of order")
        last_row = number
        last_col = 0
        for cell in cells:
            if cell["row"] != number or cell["column"] <= last_col:
                detail = f"cells out of order or repeated in row {number}"
                raise _refuse("relay.xlsx_unreadable", where, detail)
            last_col = cell["column"]
        yield number, cells


def _coord(row: int, col: int) -> str:
    return f"{column_letters(col)}{row}"


def _span(cells: list[dict[str, Any]], cols: CellRange | None) -> range:
    if cols is not None:
        return range(cols.min_col, cols.max_col + 1)
    present = [c["column"] for c in cells if c["value"] is not None]
    return range(min(present), max(present) + 1) if present else range(0)


def _header(
    cells: list[dict[str, Any]], row: int, span: range, where: str
) -> tuple[dict[int, str], tuple[str, str] | None]:
    """Column number to name over the span's columns."""
    present = {c["column"]: c for c in cells if c["value"] is not None}
    if not span:
        return {}, ("relay.xlsx_header_mismatch", f"header row {row} is empty")
    names: dict[int, str] = {}
    for col in span:
        cell = present.get(col)
        if cell is not None and cell["data_type"] == "f":
            detail = f"header cell {_coord(row, col)} is a formula"
            raise _refuse("relay.xlsx_formula", where, detail)
        if cell is None or cell["data_type"] != "s" or not cell["value"]:
            what = "empty" if cell is None else _KIND.get(cell["data_type"], "not text")
            return {}, (
                "relay.xlsx_header_mismatch",
                f"header cell {_coord(row, col)} is {what}, not a column name",
            )
        names[col] = cell["value"]
    return names, None


def _parse_rows(
    parser: WorkSheetParser, spec: Table, cols: CellRange | None, header_row: int,
    epoch_1900: bool, out: _Columns, where: str,
) -> _Sheet:  # fmt: skip
    """One pass: header, then every data row typed by its declared column."""
    sheet = _Sheet()
    declared = {c.name: CONVERTERS[c.type] for c in spec.columns}
    types = {c.name: c.type for c in spec.columns}
    last_data_row = cols.max_row if cols is not None else None
    first_data_row = cols.min_row if cols is not None else header_row + 1
    mapping: dict[int, tuple[str, Converter] | None] = {}
    for number, cells in _rows(parser, where):
        for cell in cells:
            if cell["value"] is not None:
                sheet.extent_row = max(sheet.extent_row, number)
                sheet.extent_col = max(sheet.extent_col, cell["column"])
        if number == header_row:
            sheet.span = _span(cells, cols)
            sheet.header, sheet.header_problem = _header(cells, number, sheet.span, where)
            if sheet.header_problem is None:
                try:
                    _check_columns(list(sheet.header.values()), spec, where)
                except SourceInvalid as exc:
                    sheet.header_problem = ("relay.xlsx_header_mismatch", exc.detail)
            if sheet.header_problem is None:
                mapping = {
                    col: ((name, declared[name]) if name in declared else None)
                    for col, name in sheet.header.items()
                }
            continue
        if number < first_data_row or (last_data_row is not None and number > last_data_row):
            continue
        if sheet.header is None or sheet.header_problem is not None:
            continue  # parsed on for the sheet's extent; the header decides the refusal
        values: dict[str, Any] = {}
        present = False  # any cell of the range's columns: then the row is a record
        for cell in cells:
            col, kind, value = cell["column"], cell["data_type"], cell["value"]
            if col not in mapping or value is None:
                continue
            present = True
            if kind in ("f", "e"):
                code = "relay.xlsx_formula" if kind == "f" else "relay.xlsx_error_cell"
                raise _refuse(code, where, f"cell {_coord(number, col)} is a {_KIND[kind]}")
            target = mapping[col]
            if target is None:
                continue  # an undeclared column (ignore_extra_columns): never loaded
            name, convert = target
            try:
                values[name] = convert(kind, value)
            except _Mismatch as bad:
                why = f"; {bad.why}" if bad.why else ""
                raise _refuse(
                    "relay.xlsx_type_mismatch",
                    where,
                    f"cell {_coord(number, col)} of column {name!r} is a "
                    f"{_KIND.get(bad.kind, bad.kind)} cell, declared {types[name]}{why}",
                ) from None
            if epoch_1900 and isinstance(values[name], dt.date) and values[name] < _MARCH_1900:
                raise _refuse(
                    "relay.xlsx_date_ambiguous",
                    where,
                    f"cell {_coord(number, col)}: dates before 1900-03-01 are ambiguous in the "
                    "1900 date system (its phantom 29 February)",
                )
        if present:
            out.add(values)
    return sheet


def _merged(parser: WorkSheetParser) -> list[CellRange]:
    found = parser.merged_cells.mergeCell if parser.merged_cells is not None else []
    return [CellRange(m.min_col, m.min_row, m.max_col, m.max_row) for m in found]


def _open_sheet(data: bytes, sheet: str, where: str) -> tuple[Any, ReadOnlyWorksheet]:
    try:
        wb = openpyxl.load_workbook(
            io.BytesIO(data), read_only=True, data_only=False, keep_links=True, keep_vba=False
        )
    except Exception as exc:  # any failure of the parser over untrusted bytes is a refusal
        raise _refuse(
            "relay.xlsx_unreadable", where, f"not a readable workbook ({type(exc).__name__})"
        ) from None
    try:
        if sheet not in wb.sheetnames:
            raise _refuse("relay.xlsx_sheet_missing", where, f"no sheet {sheet!r} in the workbook")
        if sum(name.casefold() == sheet.casefold() for name in wb.sheetnames) > 1:
            # Excel's names are unique regardless of case: two of them is a crafted file,
            # and which one a reviewer sees depends on the program.
            raise _refuse("relay.xlsx_unreadable", where, f"more than one sheet named {sheet!r}")
        ws = wb[sheet]
        if not isinstance(ws, ReadOnlyWorksheet):
            raise _refuse("relay.xlsx_sheet_missing", where, f"sheet {sheet!r} is not a worksheet")
        if ws.sheet_state != "visible":
            raise _refuse(
                "relay.xlsx_sheet_hidden",
                where,
                f"sheet {sheet!r} is {ws.sheet_state}: a reviewer of the workbook would not see it",
            )
        if wb._external_links:
            raise _refuse(
                "relay.xlsx_external_link", where, "the workbook links to other workbooks"
            )
    except BaseException:
        wb.close()
        raise
    return wb, ws


def decode_xlsx(data: bytes, spec: Table, *, where: str, max_bytes: int) -> pa.Table:
    """Decode one XLSX source as ``spec`` declares (blocking; run in a worker thread)."""
    options = spec.source.xlsx
    if options is None:  # the config check requires it; this is the last line
        raise _refuse("relay.xlsx_sheet_missing", where, "no xlsx.sheet configured")
    cols = options.cells()
    # 1. The archive, by its central directory, before anything is inflated.
    check_archive(data, max_bytes, where)
    # 2. The workbook: the sheet exists, is visible, and nothing links outside.
    wb, ws = _open_sheet(data, options.sheet, where)
    out = _Columns(spec, where)
    try:
        # 3. One pass of openpyxl's worksheet parser over the sheet's part.
        with wb._archive.open(ws._worksheet_path) as src:
            parser = WorkSheetParser(
                src,
                ws._shared_strings,
                data_only=False,
                epoch=wb.epoch,
                date_formats=wb._date_formats,
                timedelta_formats=wb._timedelta_formats,
            )
            sheet = _parse_rows(
                parser, spec, cols, options.header_row, wb.epoch == WINDOWS_EPOCH, out, where
            )
            merged = _merged(parser)
    except XlsxInvalid:
        raise
    except Exception as exc:  # malformed XML, a CRC, a bad number, a DTD: all refusals
        raise _refuse(
            "relay.xlsx_unreadable", where, f"the sheet does not parse ({type(exc).__name__})"
        ) from None
    finally:
        wb.close()
    # 4. The header row and the range's columns are inside what the sheet holds.
    outside = options.header_row > sheet.extent_row or (
        cols is not None and cols.max_col > sheet.extent_col
    )
    if outside:
        raise _refuse(
            "relay.xlsx_range_outside_sheet",
            where,
            f"header row {options.header_row} or range {cols} lies outside the sheet's "
            f"cells (last row {sheet.extent_row}, last column {column_letters(sheet.extent_col)})",
        )
    # 5. No merged range overlaps the header or the data (a merge shows one value in many
    #    cells but stores it in one, so the table read is not the table seen). Before the
    #    header check: a merge over the header empties all its cells but the first.
    if sheet.span:
        last_row = cols.max_row if cols is not None else max(sheet.extent_row, options.header_row)
        area = CellRange(sheet.span[0], options.header_row, sheet.span[-1], last_row)
        for m in merged:
            if m.intersects(area):
                raise _refuse("relay.xlsx_merged_cells", where, f"merged cells {m} overlap {area}")
    # 6. The header row is there (a sheet whose header row element was deleted has data
    #    below it but no header: never an empty table) and names the declared columns.
    if sheet.header is None:
        raise _refuse("relay.xlsx_header_mismatch", where,
                      f"header row {options.header_row} is not in the sheet")  # fmt: skip
    if sheet.header_problem is not None:
        code, detail = sheet.header_problem
        raise _refuse(code, where, detail)
    # 7. The same strict conformance as CSV and Parquet.
    return _conform(out.table(), spec, where)
