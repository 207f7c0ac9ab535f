"""XLSX attacks (review 13): a workbook whose header row is missing must not load empty.

A header row that is present but has no cells is refused (``relay.xlsx_header_mismatch``,
"header row 1 is empty"). Delete the ``<row r="1">`` element instead and every data row
is skipped (no header was seen), the header check never runs, and the table loads with
zero rows: a refresh would replace a good snapshot with an empty one, without a refusal.
"""

from __future__ import annotations

import re

import pytest

from assay.relay.xlsxsource import XlsxInvalid
from tests.relay.test_xlsx import GOOD, _load
from tests.relay.xlsxmaker import SHEET_PART, edit_part, workbook


def _without_row(number: int) -> bytes:
    pattern = rb'<row r="%d">.*?</row>' % number
    return edit_part(workbook(GOOD), SHEET_PART, lambda b: re.sub(pattern, b"", b, flags=re.S))


def test_header_row_element_deleted_is_refused_not_loaded_as_an_empty_table() -> None:
    data = _without_row(1)
    with pytest.raises(XlsxInvalid) as info:
        table = _load(data)
        pytest.fail(f"loaded {table.num_rows} rows from a sheet with no header row")
    assert info.value.code in ("relay.xlsx_header_mismatch", "relay.xlsx_range_outside_sheet")
