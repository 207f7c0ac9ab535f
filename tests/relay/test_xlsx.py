"""XLSX sources: typed cells to the declared schema, and every crafted workbook refused by
its stable code (formulas with cached values, merges, zip bombs, DTDs, links, hidden
sheets, ambiguous dates, cells that are not what their column declares)."""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import python_calamine

from assay.relay.config import Table
from assay.relay.snapshot import SnapshotStore, TableState, load
from assay.relay.xlsxsource import CODES, XlsxInvalid, decode_xlsx
from tests.relay.xlsxmaker import SHEET_PART, edit_part, lie_about_size, parts, repack, workbook

MiB = 1024 * 1024
HEADER = ["id", "name", "born", "seen", "score", "ok"]
GOOD = [
    HEADER,
    [1, "Ada", dt.date(1990, 1, 2), "2024-01-02T03:04:05Z", 1.5, True],
    [2, None, dt.date(1991, 2, 3), "2024-01-02T03:04:05+02:00", None, False],
    [3, "007", dt.date(2000, 2, 29), None, -2, None],
]
SECRET = "SECRET-VALUE-7731"


def _table(**xlsx: Any) -> Table:
    return Table.model_validate(
        {
            "id": "t",
            "source": {"path": "t.xlsx", "xlsx": {"sheet": "Data", **xlsx}},
            "primary_key": "id",
            "schema": [
                {"name": "id", "type": "integer", "nullable": False},
                {"name": "name", "type": "string"},
                {"name": "born", "type": "date"},
                {"name": "seen", "type": "timestamp"},
                {"name": "score", "type": "number"},
                {"name": "ok", "type": "boolean"},
            ],
        }
    )


def _load(data: bytes, *, max_bytes: int = 64 * MiB, **xlsx: Any) -> Any:
    return decode_xlsx(data, _table(**xlsx), where="civil.t", max_bytes=max_bytes)


def _refused(data: bytes, code: str, **kw: Any) -> XlsxInvalid:
    with pytest.raises(XlsxInvalid) as info:
        _load(data, **kw)
    assert info.value.code == code, info.value.detail
    assert code in CODES
    assert "civil.t" in info.value.detail
    assert SECRET not in info.value.detail
    return info.value


def test_well_typed_sheet_loads_with_declared_types_and_text_stays_text() -> None:
    t = _load(workbook(GOOD))
    assert t.column_names == HEADER
    assert t.column("id").to_pylist() == [1, 2, 3]
    assert t.column("name").to_pylist() == ["Ada", None, "007"]  # leading zeros kept
    assert t.column("born").to_pylist()[2] == dt.date(2000, 2, 29)
    assert t.column("seen").to_pylist()[1] == dt.datetime(2024, 1, 2, 1, 4, 5, tzinfo=dt.UTC)
    assert t.column("score").to_pylist() == [1.5, None, -2.0]
    assert t.column("ok").to_pylist() == [True, False, None]


def test_the_1904_date_system_gives_the_same_dates() -> None:
    assert _load(workbook(GOOD, epoch_1904=True)).equals(_load(workbook(GOOD)))


def test_title_rows_above_the_header_and_rows_past_the_range_are_not_read() -> None:
    rows = [["Registry of people, 2026"], [], *GOOD[:2], [], *GOOD[2:],
            [9, SECRET, None, None, None, None]]  # fmt: skip
    t = _load(
        workbook(rows, edit=lambda wb: wb.active.merge_cells("A1:F1")),
        header_row=3,
        data_range="A4:F7",
    )
    assert t.column("id").to_pylist() == [1, 2, 3]


def test_formula_with_a_cached_value_is_refused_though_calamine_reads_the_value() -> None:
    value = b'<c r="E2" t="n"><v>1.5</v></c>'
    formula = b'<c r="E2"><f>1+0.5</f><v>1.5</v></c>'
    data = edit_part(workbook(GOOD), SHEET_PART, lambda x: x.replace(value, formula))
    # A reader that returns cached values would serve this as data, stale or not.
    cached = python_calamine.CalamineWorkbook.from_filelike(io.BytesIO(data))
    assert cached.get_sheet_by_name("Data").to_python()[1][4] == 1.5
    err = _refused(data, "relay.xlsx_formula")
    assert "E2" in err.detail


def test_formula_in_the_header_is_refused() -> None:
    rows = [['="id"', *HEADER[1:]], *GOOD[1:]]
    _refused(workbook(rows, literal=False), "relay.xlsx_formula")


def test_text_that_looks_like_a_formula_or_an_error_is_text() -> None:
    rows = [*GOOD, [4, "=1+1", None, None, None, None], [5, "#N/A", None, None, None, None]]
    assert _load(workbook(rows)).column("name").to_pylist()[3:] == ["=1+1", "#N/A"]


def test_formula_in_an_ignored_column_is_refused_too() -> None:
    rows = [[*HEADER, "extra"], *[[*r, "=1+1"] for r in GOOD[1:]]]
    spec = _table().model_copy(update={"ignore_extra_columns": True})
    with pytest.raises(XlsxInvalid) as info:
        decode_xlsx(workbook(rows, literal=False), spec, where="civil.t", max_bytes=MiB)
    assert info.value.code == "relay.xlsx_formula"


@pytest.mark.parametrize("error", ["#DIV/0!", "#N/A", "#VALUE!", "#REF!"])
def test_error_cell_is_refused(error: str) -> None:
    rows = [HEADER, [1, "Ada", None, None, error, None]]
    _refused(workbook(rows, literal=False), "relay.xlsx_error_cell")


@pytest.mark.parametrize(
    ("ref", "code"),
    [("B3:C3", "relay.xlsx_merged_cells"), ("A1:B1", "relay.xlsx_merged_cells")],
    ids=["over-data", "over-header"],
)
def test_merged_cells_over_the_table_are_refused(ref: str, code: str) -> None:
    _refused(workbook(GOOD, edit=lambda wb: wb.active.merge_cells(ref)), code)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        (1, 12),  # a number in a string column (ids that lost their zeros)
        (0, "12"),  # text that looks like a number in an integer column
        (0, 1.5),  # not a whole number
        (0, True),  # a boolean in an integer column
        (4, "1.5"),  # text in a number column
        (5, "true"),  # text in a boolean column
        (5, 1),  # a number in a boolean column
        (2, 32875),  # a date serial without a date format: a number, not a date
        (2, "1990-01-02"),  # text in a date column
        (2, dt.datetime(1990, 1, 2, 3, 4)),  # a date-time in a date column
        (3, dt.datetime(2024, 1, 2, 3, 4)),  # an Excel date-time has no zone
        (2, dt.time(3, 4)),  # a time of day in a date column
    ],
    ids=[
        "number-in-string", "numeric-text-in-integer", "fraction-in-integer",
        "bool-in-integer", "text-in-number", "text-in-boolean", "number-in-boolean",
        "serial-in-date", "text-in-date", "datetime-in-date", "naive-datetime-in-timestamp",
        "time-in-date",
    ],
)  # fmt: skip
def test_cell_of_another_kind_than_its_column_is_refused(column: int, value: Any) -> None:
    row: list[Any] = [5, "Bo", None, None, None, None]
    row[column] = value
    err = _refused(workbook([*GOOD, row]), "relay.xlsx_type_mismatch")
    assert HEADER[column] in err.detail
    assert "5" in err.detail  # the cell's row


def test_refusals_never_quote_the_value() -> None:
    row = [4, None, None, None, SECRET, None]
    _refused(workbook([*GOOD, row]), "relay.xlsx_type_mismatch")


def test_date_before_march_1900_is_refused_as_ambiguous() -> None:
    row = [4, None, dt.date(1900, 2, 27), None, None, None]
    _refused(workbook([*GOOD, row]), "relay.xlsx_date_ambiguous")


def test_missing_sheet_is_refused() -> None:
    _refused(workbook(GOOD, sheet="Other"), "relay.xlsx_sheet_missing")


def test_two_sheets_of_one_name_but_its_case_are_refused() -> None:
    # openpyxl will not write it (it renames the second), so the workbook part is edited.
    data = workbook(GOOD, edit=lambda wb: wb.create_sheet("Other").append([SECRET]))
    data = edit_part(data, "xl/workbook.xml", lambda x: x.replace(b'"Other"', b'"DATA"'))
    _refused(data, "relay.xlsx_unreadable")


@pytest.mark.parametrize("state", ["hidden", "veryHidden"])
def test_hidden_sheet_is_refused_but_another_hidden_sheet_is_ignored(state: str) -> None:
    def hide_data(wb: Any) -> None:
        wb.create_sheet("Shown")
        wb["Data"].sheet_state = state
        wb.active = 1

    _refused(workbook(GOOD, edit=hide_data), "relay.xlsx_sheet_hidden")

    def hide_other(wb: Any) -> None:
        wb.create_sheet("Notes").sheet_state = state
        wb["Notes"].append([SECRET])

    assert _load(workbook(GOOD, edit=hide_other)).num_rows == 3


@pytest.mark.parametrize(
    "header",
    [
        ["id", "name", "born", "seen", "score"],  # a declared column missing
        [*HEADER, "salary"],  # an undeclared column
        ["id", "name", "born", "seen", "score", "score"],  # a repeated name
        ["id", "name", None, "seen", "score", "ok"],  # an empty header cell
        ["id", "name", 2024, "seen", "score", "ok"],  # a number as a header
    ],
    ids=["missing", "undeclared", "repeated", "empty-cell", "number"],
)
def test_header_that_does_not_name_the_declared_columns_is_refused(header: list[Any]) -> None:
    rows = [header, [1, "Ada", dt.date(1990, 1, 2), None, 1.5, True, 1]]
    _refused(workbook(rows), "relay.xlsx_header_mismatch")


@pytest.mark.parametrize(
    "xlsx",
    [{"data_range": "A2:G4"}, {"data_range": "B2:H4"}, {"header_row": 9}],
    ids=["one-column-too-many", "shifted-right", "header-below-the-sheet"],
)
def test_range_outside_the_sheet_is_refused(xlsx: dict[str, Any]) -> None:
    _refused(workbook(GOOD), "relay.xlsx_range_outside_sheet", **xlsx)


@pytest.mark.parametrize("bad", ["a2:f9", "A2:F9 ", "$A$2:F9", "Data!A2:F9", "A02:F9",
                                 "F2:A9", "A9:F2", "A2:XFE9", "A2:F1048577", "A:F"])  # fmt: skip
def test_data_range_is_validated_strictly(bad: str) -> None:
    with pytest.raises(ValueError, match="data_range"):
        _table(data_range=bad)


def test_inflated_size_over_the_cap_is_refused_before_any_part_is_parsed() -> None:
    # The sheet part is not even XML: the central directory alone decides.
    contents = parts(workbook(GOOD))
    contents[SHEET_PART] = b"<" + b" " * (2 * MiB)
    err = _refused(repack(contents), "relay.xlsx_too_large", max_bytes=MiB)
    assert str(MiB) in err.detail


def test_huge_shared_strings_are_bounded_by_the_cap() -> None:
    contents = parts(workbook(GOOD))
    many = b"".join(b"<si><t>x</t></si>" for _ in range(200_000))
    contents["xl/sharedStrings.xml"] = (
        b'<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        + many
        + b"</sst>"
    )
    _refused(repack(contents), "relay.xlsx_too_large", max_bytes=MiB)


def test_part_that_lies_about_its_size_is_never_inflated_past_the_lie() -> None:
    # A 64 MiB sheet that deflates to ~64 KiB, declared as 2 KiB: zipfile stops at the
    # declared size and the CRC refuses the part; memory stays far below the real size.
    contents = parts(workbook(GOOD))
    head, _, tail = contents[SHEET_PART].partition(b"</sheetData>")
    contents[SHEET_PART] = head + b" " * (64 * MiB) + b"</sheetData>" + tail
    data = lie_about_size(repack(contents), SHEET_PART, 2048)
    assert len(data) < MiB
    tracemalloc.start()
    try:
        _refused(data, "relay.xlsx_unreadable", max_bytes=MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * MiB


def test_entity_expansion_in_shared_strings_is_refused() -> None:
    laughs = (
        b'<?xml version="1.0"?><!DOCTYPE sst [<!ENTITY a "aaaaaaaaaa">'
        b'<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;">]>'
        b'<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">'
        b"<si><t>&c;</t></si></sst>"
    )
    contents = parts(workbook(GOOD))
    contents["xl/sharedStrings.xml"] = laughs
    contents["[Content_Types].xml"] = contents["[Content_Types].xml"].replace(
        b"</Types>",
        b'<Override PartName="/xl/sharedStrings.xml" ContentType="application/'
        b'vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml" /></Types>',
    )
    contents[SHEET_PART] = contents[SHEET_PART].replace(
        b'<c r="B2" t="inlineStr"><is><t>Ada</t></is></c>', b'<c r="B2" t="s"><v>0</v></c>'
    )
    _refused(repack(contents), "relay.xlsx_unreadable")


def test_external_workbook_link_is_refused() -> None:
    rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    contents = parts(workbook(GOOD))
    contents["xl/workbook.xml"] = contents["xl/workbook.xml"].replace(
        b"</sheets>",
        b'</sheets><externalReferences><externalReference r:id="rId99" /></externalReferences>',
    )
    contents["xl/_rels/workbook.xml.rels"] = contents["xl/_rels/workbook.xml.rels"].replace(
        b"</Relationships>",
        f'<Relationship Type="{rel}/externalLink" Target="externalLinks/externalLink1.xml" '
        'Id="rId99" /></Relationships>'.encode(),
    )
    contents["xl/externalLinks/externalLink1.xml"] = (
        '<externalLink xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main" '
        f'xmlns:r="{rel}"><externalBook r:id="rId1"><sheetNames><sheetName val="S" />'
        "</sheetNames></externalBook></externalLink>"
    ).encode()
    contents["xl/externalLinks/_rels/externalLink1.xml.rels"] = (
        '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
        f'<Relationship Id="rId1" Type="{rel}/externalLinkPath" Target="file:///C:/other.xlsx"'
        ' TargetMode="External" /></Relationships>'
    ).encode()
    _refused(repack(contents), "relay.xlsx_external_link")


@pytest.mark.parametrize(
    "change",
    [
        lambda x: x.replace(b'<row r="3">', b'<row r="2">'),  # a row repeated
        lambda x: x.replace(b'<row r="4">', b'<row r="1">'),  # a row out of order
        lambda x: x.replace(b'r="B2"', b'r="A2"'),  # a cell repeated
        lambda x: x.replace(b'r="B2"', b'r="B7"'),  # a cell outside its row
        lambda x: x.replace(b"<v>1.5</v>", b"<v>nan</v>"),  # not a number
    ],
    ids=["row-repeated", "row-out-of-order", "cell-repeated", "cell-outside-its-row", "nan"],
)
def test_malformed_sheet_is_refused_not_repaired(change: Any) -> None:
    _refused(edit_part(workbook(GOOD), SHEET_PART, change), "relay.xlsx_unreadable")


@pytest.mark.parametrize(
    "data",
    [b"", b"id,name\n1,a\n", b"PK\x03\x04" + b"\0" * 100],
    ids=["empty", "csv-named-xlsx", "truncated-zip"],
)
def test_bytes_that_are_not_a_workbook_are_refused(data: bytes) -> None:
    _refused(data, "relay.xlsx_unreadable")


def test_null_in_the_key_and_duplicate_keys_are_refused_as_for_csv() -> None:
    from assay.relay.decode import SourceInvalid

    with pytest.raises(SourceInvalid, match="null"):
        _load(workbook([*GOOD, [None, "Bo", None, None, None, None]]))
    with pytest.raises(SourceInvalid, match="null"):  # a row without its key
        _load(workbook([HEADER, *GOOD[1:], [None, None, None, None, None, True]]))
    with pytest.raises(SourceInvalid, match="duplicate"):
        _load(workbook([*GOOD, [3, "Bo", None, None, None, None]]))


def _state(path: Path, spec: Table) -> TableState:
    return TableState("civil", spec, path, 64 * MiB)


async def test_reload_of_a_crafted_workbook_keeps_the_old_snapshot_and_names_the_code(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.xlsx"
    path.write_bytes(workbook(GOOD))
    state = _state(path, _table())
    store = SnapshotStore([state])
    store.load_all_blocking()
    before = store.get("civil", "t")
    path.write_bytes(workbook(GOOD, edit=lambda wb: wb.active.merge_cells("B2:C2")))
    assert await store.reload(state) is False  # in a worker thread, like every load
    assert store.get("civil", "t") is before
    status = store.status()["civil.t"]
    assert status["stale"] is True
    assert status["last_error_code"] == "relay.xlsx_merged_cells"
    path.write_bytes(workbook([*GOOD, [4, "Cy", None, None, None, None]]))
    assert await store.reload(state) is True
    assert store.get("civil", "t").rows == 4
    assert store.status()["civil.t"]["last_error_code"] is None


def test_snapshot_digest_is_of_the_workbook_bytes(tmp_path: Path) -> None:
    data = workbook(GOOD)
    path = tmp_path / "t.xlsx"
    path.write_bytes(data)
    snap = load(_state(path, _table()), 1)
    assert snap.digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert snap.rows == 3
