"""The relay's pure modules reach no I/O, and the planner refuses any input only by type."""

from __future__ import annotations

import string
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assay.core.caller_text import printable, purpose_valid
from assay.core.errors import BadRequest
from assay.relay import cursor, jws
from assay.relay.planner import Bounds, FieldSpec, plan_records

FIELDS = (
    FieldSpec("id", "id", "string", True),
    FieldSpec("size", "size", "integer"),
    FieldSpec("born", "born", "date"),
    FieldSpec("seen", "seen", "timestamp"),
    FieldSpec("ok", "ok", "boolean"),
    FieldSpec("score", "score", "number"),
)
ALLOWED = {f.name: frozenset({"eq", "in", "gte", "lte", "between"}) for f in FIELDS}
NAMES = st.sampled_from(
    ["id", "size", "size.in", "born.between", "seen.gte", "ok", "score.lte", "limit",
     "cursor", "fields", "x", "id.in", "size.between"]
)  # fmt: skip

#: Free text is marked with a "\u00a7" so a value echoed into ``reasons`` is caught.
VALUES = st.text(max_size=40).map(lambda t: "\u00a7" + t) | st.sampled_from(
    ["1", "5", "2024-01-01", "2024-01-01T00:00:00Z", "true", "1,2", "1.5", "a,b,c"]
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.tuples(NAMES | st.text(max_size=12), VALUES),
        max_size=25,
    )
)
def test_planner_turns_any_input_into_a_plan_or_a_bad_request(
    args: list[tuple[str, str]],
) -> None:
    try:
        plan = plan_records(
            args, fields=FIELDS, allowed=ALLOWED, required=(), default_limit=10,
            max_limit=100, bounds=Bounds(max_filters=20, max_in_values=5, max_value_chars=32),
            max_cursor_chars=64,
        )  # fmt: skip
    except BadRequest as err:
        assert err.code.split(".")[0] in {"entity", "request"}
        # Values never reach reasons (which the audit keeps); no field name holds a "\u00a7".
        assert "\u00a7" not in " ".join(err.reasons) or any("\u00a7" in k for k, _ in args)
        return
    assert 1 <= plan.limit <= 100
    assert all(c.field in ALLOWED for c in plan.conditions)
    assert len(plan.conditions) <= 20


_B64URL = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 2**63 - 1), st.binary(min_size=32, max_size=32))
def test_every_one_character_change_of_a_cursor_is_refused(offset: int, bound: bytes) -> None:
    """Each of a cursor's 34 characters replaced by each other base64url character (and
    a few that are not base64url): the last character's ignored bits included, no
    spelling but the one written decodes."""
    key = cursor.derive_key(b"k" * 32, "cursor")
    token = cursor.encode(key, bound, offset)
    assert cursor.decode(key, bound, token) == offset
    for i, old in enumerate(token):
        for new in _B64URL + "+/=.\u0661\u00e9":
            if new == old:
                continue
            with pytest.raises(BadRequest) as info:
                cursor.decode(key, bound, token[:i] + new + token[i + 1 :])
            assert info.value.code == "entity.cursor_invalid"


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=1, max_size=40))
def test_jws_base64url_has_one_spelling(data: bytes) -> None:
    """The same bytes under another token (ignored trailing bits set, padding, the
    standard alphabet) must not decode to them: one spelling per JWS part."""
    text = jws._b64(data)
    assert jws._unb64(text) == data
    others = {text + "=", text + "==", text.replace("-", "+").replace("_", "/")}
    others |= {text[:-1] + c for c in _B64URL}
    for other in others - {text}:
        try:
            decoded = jws._unb64(other)
        except ValueError:
            continue
        assert decoded != data, f"{other!r} is another spelling of {text!r}"


@given(st.text(max_size=30))
def test_printable_refuses_every_control_format_and_separator_character(text: str) -> None:
    """Against ``unicodedata`` itself: C0, DEL and C1 controls, bidi and other format
    characters, surrogates, private use, unassigned, line and paragraph separators."""
    bad = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
    assert printable(text) == (not any(unicodedata.category(c) in bad for c in text))


@pytest.mark.parametrize(
    "value", ["audit\x9b2J", "x\x85y", "ok\u202egnp.exe", "a\u2066b\u2069", "z\u200bw", "\u2028"]
)
def test_a_purpose_with_c1_bidi_or_separator_characters_is_not_valid(value: str) -> None:
    assert not purpose_valid(value)
    assert purpose_valid("benefit-eligibility-check") and purpose_valid("caf\u00e9 \u00a0review")
