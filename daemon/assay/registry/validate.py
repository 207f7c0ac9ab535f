"""Validation of client-supplied names, metadata and free text (reasons).

Why strict: names and metadata end up in logs, JSON, journald fields and CLI output; a
name like ``../../etc/passwd`` or one carrying control characters must be refused before
it is stored anywhere. Every pattern is matched with ``fullmatch``: ``re.match`` with a
``$`` anchor accepts a trailing ``\\n`` (``$`` also matches before a final newline).
Pure.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from assay.core.errors import BadRequest

_NAME_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_META_KEY = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
MAX_META_VALUE_CHARS = 1024

#: Unicode categories refused anywhere in client text that is stored, logged or shown to
#: a person (metadata values, reasons). Names and keys are ASCII by pattern already.
#:   Cc  C0 and C1 controls and DEL (NEL U+0085 ends a line for some readers);
#:   Cf  format characters: bidi overrides and isolates (U+202A-E, U+2066-9) that make
#:       text display in another order than it is stored, zero-width characters, BOM;
#:   Cs  lone surrogates (a JSON escape can spell one; they are not text);
#:   Co  private use, Cn unassigned (no agreed meaning or rendering; an unassigned code
#:       point may become a format character later);
#:   Zl, Zp  U+2028 / U+2029, line and paragraph separators.
#: Tabs are controls too; text here is one line.
REFUSED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


def unsafe_char(text: str) -> str | None:
    """The first character of ``text`` in a refused category, or None."""
    for ch in text:
        if unicodedata.category(ch) in REFUSED_CATEGORIES:
            return ch
    return None


def check_text(value: str, *, what: str, max_chars: int, code: str = "request.invalid") -> str:
    """One line of human text: bounded, and no character from ``REFUSED_CATEGORIES``."""
    if len(value) > max_chars:
        raise BadRequest(f"{what} is longer than {max_chars} characters", code=code)
    bad = unsafe_char(value)
    if bad is not None:
        raise BadRequest(f"{what} has a control or format character (U+{ord(bad):04X})", code=code)
    return value


def check_name(name: str, *, max_chars: int = 200) -> str:
    """A name is ``/``-separated segments of ``[A-Za-z0-9._+-]``, none ``.`` or ``..``."""
    if not name or len(name) > max_chars:
        raise BadRequest(f"name must be 1-{max_chars} characters", code="request.bad_name")
    for segment in name.split("/"):
        if segment in {".", ".."} or not _NAME_SEGMENT.fullmatch(segment):
            raise BadRequest(
                f"invalid name {name[:80]!r}: segments are [A-Za-z0-9._+-], not '.' or '..'",
                code="request.bad_name",
            )
    return name


def check_metadata(pairs: Iterable[str], *, max_entries: int) -> dict[str, str]:
    """Parse ``key=value`` pairs; refuse duplicates, odd keys and control characters."""
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise BadRequest(
                f"metadata {pair[:80]!r} is not key=value", code="request.bad_metadata"
            )
        if not _META_KEY.fullmatch(key):
            raise BadRequest(
                f"metadata key {key[:80]!r} must match [a-z0-9][a-z0-9_.-]{{0,63}}",
                code="request.bad_metadata",
            )
        check_text(
            value,
            what=f"metadata {key!r} value",
            max_chars=MAX_META_VALUE_CHARS,
            code="request.bad_metadata",
        )
        if key in metadata:
            raise BadRequest(f"metadata key {key!r} given twice", code="request.bad_metadata")
        metadata[key] = value
        if len(metadata) > max_entries:
            raise BadRequest(
                f"more than {max_entries} metadata entries", code="request.bad_metadata"
            )
    return metadata
