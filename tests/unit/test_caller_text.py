"""Caller text the audit copies: one rule for the registry and the relay (core.caller_text).

Searched, not listed: whatever a client puts in ``X-Request-Id`` or ``X-Purpose`` (any
code point, any length), what reaches the record and the answer header is visible ASCII
(request id) or printable text (purpose), and a dropped purpose is marked.
"""

from __future__ import annotations

import unicodedata

from hypothesis import given
from hypothesis import strategies as st

from assay.core import caller_text
from assay.core.web import RequestAudit, purpose_of, request_id_of

#: Header values arrive as Latin-1 decoded bytes (obs-text is U+0080..U+00FF).
latin1 = st.text(alphabet=st.characters(max_codepoint=0xFF), max_size=80)


@given(st.one_of(latin1, st.text(max_size=80), st.none()))
def test_any_request_id_reaching_the_record_is_visible_ascii(value: str | None) -> None:
    got = request_id_of(value)
    assert 1 <= len(got) <= caller_text.MAX_REQUEST_ID_CHARS
    assert all("!" <= c <= "~" for c in got), repr(got)
    # A valid one is kept as sent (clients correlate on it); anything else is replaced.
    assert (got == value) == (value is not None and caller_text.request_id_valid(value))


@given(st.one_of(latin1, st.text(max_size=260), st.none()))
def test_any_purpose_reaching_the_record_is_printable_and_a_dropped_one_is_marked(
    value: str | None,
) -> None:
    audit = RequestAudit()
    kept = purpose_of(value, audit)
    bad = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
    acceptable = (
        bool(value)
        and len(value or "") <= caller_text.MAX_PURPOSE_CHARS
        and not any(unicodedata.category(c) in bad for c in value or "")
    )
    assert kept == (value if acceptable else None)
    assert audit.extra.get("purpose_invalid", False) == (bool(value) and not acceptable)


def test_ansi_escape_and_crlf_in_the_request_id_are_replaced() -> None:
    for value in ("a\x1b[31mb", "a\r\nSet-Cookie: x=1", "a\x00b", "a\x7fb", "a\x9bb", "a b"):
        assert request_id_of(value) != value
    assert request_id_of("r" * 65) != "r" * 65  # too long: replaced, not cut
    assert request_id_of("req-1.2_3") == "req-1.2_3"


def test_ansi_escape_in_the_purpose_is_recorded_as_absent_and_marked() -> None:
    audit = RequestAudit()
    assert purpose_of("p\x1b[2J\xff", audit) is None and audit.extra["purpose_invalid"]
    audit = RequestAudit()
    assert purpose_of("caf\u00e9 review", audit) == "caf\u00e9 review" and not audit.extra
