"""A1-style cell ranges (``A2:F100000``), parsed strictly for the XLSX source config.

Why strict: the range says which cells are served, so one spelling means one range. Only
upper-case column letters and a row number without leading zeros on each side of one
colon; no ``$`` anchors, no sheet prefix, no whole-column ``A:A``; columns up to ``XFD``
and rows up to 1,048,576 (the format's limits); the first corner above and left of (or
equal to) the second. Pure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_ROW = 1_048_576
MAX_COLUMN = 16_384  # XFD
_CELL = r"([A-Z]{1,3})([1-9][0-9]{0,6})"
_RANGE = re.compile(rf"{_CELL}:{_CELL}")


def column_number(letters: str) -> int:
    """``A`` is 1, ``Z`` 26, ``AA`` 27, ``XFD`` 16,384."""
    n = 0
    for ch in letters:
        n = n * 26 + (ord(ch) - ord("A") + 1)
    return n


def column_letters(number: int) -> str:
    out = ""
    while number > 0:
        number, rest = divmod(number - 1, 26)
        out = chr(ord("A") + rest) + out
    return out


@dataclass(frozen=True)
class CellRange:
    """Inclusive 1-based bounds, as the A1 text says them."""

    min_col: int
    min_row: int
    max_col: int
    max_row: int

    def __str__(self) -> str:
        return (
            f"{column_letters(self.min_col)}{self.min_row}:"
            f"{column_letters(self.max_col)}{self.max_row}"
        )

    def contains(self, row: int, col: int) -> bool:
        return self.min_row <= row <= self.max_row and self.min_col <= col <= self.max_col

    def intersects(self, other: CellRange) -> bool:
        return not (
            other.max_row < self.min_row
            or other.min_row > self.max_row
            or other.max_col < self.min_col
            or other.min_col > self.max_col
        )


def parse_range(text: str) -> CellRange:
    """The range ``text`` names, or ValueError saying why it is not one."""
    # 1. The whole text is two cells and one colon (fullmatch: no trailing newline).
    m = _RANGE.fullmatch(text)
    if m is None:
        raise ValueError(
            f"{text!r} is not an A1 range like 'A2:F1000' (upper-case columns, no '$', "
            "no sheet name)"
        )
    c1, r1, c2, r2 = column_number(m[1]), int(m[2]), column_number(m[3]), int(m[4])
    # 2. Both corners inside the format's limits.
    if max(c1, c2) > MAX_COLUMN or max(r1, r2) > MAX_ROW:
        raise ValueError(f"{text!r} is outside XLSX limits (XFD{MAX_ROW})")
    # 3. Top-left first.
    if c1 > c2 or r1 > r2:
        raise ValueError(f"{text!r}: the first cell must be above and left of the second")
    return CellRange(c1, r1, c2, r2)
