"""The strict body parser, searched with hypothesis: it returns an object or refuses."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assay.core.errors import BadRequest
from assay.registry import bodies

ALLOWED = frozenset({"reason", "signatures"})


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_to_an_object_or_a_bad_request(raw: bytes) -> None:
    try:
        out = bodies.parse_object(raw, allowed=ALLOWED)
    except BadRequest as err:
        assert err.code in {"request.bad_json", "request.invalid"}
        assert err.status == 400
    else:
        assert isinstance(out, dict) and set(out) <= ALLOWED


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
        max_leaves=20,
    )
)
def test_an_accepted_body_is_exactly_what_json_says_within_the_depth_bound(value: object) -> None:
    raw = json.dumps({"reason": value}).encode()
    try:
        out = bodies.parse_object(raw, allowed=ALLOWED)
    except BadRequest as err:
        assert err.code == "request.bad_json"  # nested too deep or a number too long
        return
    assert out == {"reason": value}
    assert bodies._depth(out) <= bodies.MAX_DEPTH


@pytest.mark.parametrize("depth", [1000, 5000, 30000])
def test_nesting_past_the_interpreter_limit_is_refused_not_raised(depth: int) -> None:
    with pytest.raises(BadRequest) as caught:
        bodies.parse_object(b"[" * depth + b"]" * depth, allowed=ALLOWED)
    assert caught.value.code == "request.bad_json"


def test_duplicate_keys_at_any_depth_are_refused() -> None:
    raw = b'{"signatures": [{"key_id": "a", "key_id": "b", "signature": "AAAA"}]}'
    with pytest.raises(BadRequest, match="duplicate key"):
        bodies.parse_object(raw, allowed=ALLOWED)


def test_signatures_keep_one_per_key_and_refuse_a_second() -> None:
    one = {"key_id": "acme", "signature": "AAAA"}
    assert bodies.signatures({"signatures": [one]}) == (("acme", "AAAA"),)
    with pytest.raises(BadRequest, match="twice"):
        bodies.signatures({"signatures": [one, one]})
