"""Workbooks for the XLSX tests: written by openpyxl, then edited part by part the way an
attacker edits one (a formula beside its cached value, a DTD, a lying size in the zip's
central directory), since openpyxl would never write those itself."""

from __future__ import annotations

import datetime as dt
import io
import struct
import zipfile
from collections.abc import Callable, Sequence
from typing import Any

import openpyxl
import pyarrow as pa

SHEET_PART = "xl/worksheets/sheet1.xml"


def workbook(
    rows: Sequence[Sequence[Any]],
    *,
    sheet: str = "Data",
    epoch_1904: bool = False,
    edit: Callable[[Any], None] | None = None,
    literal: bool = True,
) -> bytes:
    """One sheet of ``rows`` (the first is usually the header), saved to bytes.

    openpyxl guesses from text: ``=...`` becomes a formula and ``#N/A`` an error cell.
    ``literal`` keeps every ``str`` a text cell; pass False to let it guess."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = sheet
    if epoch_1904:
        wb.epoch = openpyxl.utils.datetime.CALENDAR_MAC_1904
    for row in rows:
        ws.append(list(row))
        if literal:
            for cell in ws[ws.max_row]:
                if isinstance(cell.value, str):
                    cell.data_type = "s"
    if edit is not None:
        edit(wb)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def parts(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {name: z.read(name) for name in z.namelist()}


def repack(contents: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, body in contents.items():
            z.writestr(name, body)
    return buf.getvalue()


def edit_part(data: bytes, name: str, change: Callable[[bytes], bytes]) -> bytes:
    contents = parts(data)
    new = change(contents[name])
    assert new != contents[name], f"the edit of {name} changed nothing"
    contents[name] = new
    return repack(contents)


def lie_about_size(data: bytes, name: str, declared: int) -> bytes:
    """Rewrite ``name``'s uncompressed size in its local header and the central directory
    (the CRC stays that of the real content)."""
    out = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        info = z.getinfo(name)
    # Local header: signature, then size fields at offset 22 (compressed 18, plain 22).
    assert out[info.header_offset : info.header_offset + 4] == b"PK\x03\x04"
    struct.pack_into("<I", out, info.header_offset + 22, declared)
    # Central directory entry: find it by its signature and name; plain size at 24.
    raw = name.encode()
    at = out.find(b"PK\x01\x02")
    while at != -1:
        (name_len,) = struct.unpack_from("<H", out, at + 28)
        if bytes(out[at + 46 : at + 46 + name_len]) == raw:
            struct.pack_into("<I", out, at + 24, declared)
            return bytes(out)
        at = out.find(b"PK\x01\x02", at + 4)
    raise AssertionError(f"{name} not in the central directory")


def table_rows(table: pa.Table) -> list[list[Any]]:
    """An Arrow table as workbook rows: header first; timestamps as ISO text with offset
    (the only way XLSX holds a zoned time), dates as date cells."""
    out: list[list[Any]] = [list(table.column_names)]
    for rec in table.to_pylist():
        row = []
        for value in rec.values():
            if isinstance(value, dt.datetime):
                value = value.isoformat()
            row.append(value)
        out.append(row)
    return out
