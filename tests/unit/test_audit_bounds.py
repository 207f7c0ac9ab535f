"""The record builder: from any input, a record the log accepts, cut and marked, never refused.

The search: hypothesis builds caller fields out of anything (any unicode with lone
surrogates and NULs, huge strings, thousands of list items, non-string values, missing
and unknown fields); ``bound`` must always give fields that ``check_fields`` (the strict
validator the writer runs) accepts, whose sealed line the verifier authenticates, and
valid input must come back unchanged and unmarked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assay.core.audit.bounds import DROPPED, MALFORMED_PARAM, MARK, TRUNCATED, bound
from assay.core.audit.schema import (
    CALLER_FIELDS,
    MAX_ITEMS,
    MAX_LINE,
    MAX_SHORT,
    MAX_TEXT,
    check_fields,
)
from tests.unit.audit_util import fields, open_log, read_files, verify_bytes

SEARCH = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))

#: Any code point, lone surrogates included; sizes from empty to past every limit.
ANY_TEXT = st.one_of(
    st.text(st.characters(codec=None), max_size=40),
    st.text(st.characters(codec=None), min_size=500, max_size=5000),
    st.builds(lambda c, n: c * n, st.characters(codec=None), st.integers(0, 20_000)),
)
ANY_SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), ANY_TEXT,
    st.integers(min_value=2**64, max_value=2**70),
)  # fmt: skip
ANY_VALUE = st.one_of(ANY_SCALAR, st.lists(ANY_TEXT, max_size=3), st.binary(max_size=10))


def long_list(item: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.one_of(
        st.lists(item, max_size=8),
        st.builds(lambda x, n: [f"{x}{i}" for i in range(n)], item, st.integers(60, 3000)),
    )


OPTIONAL_NAMES = (
    "request_id", "principal", "route", "target", "from_state", "to_state", "error_code",
    "purpose", "status",
)  # fmt: skip
PARAM = st.one_of(
    ANY_TEXT,
    st.builds(lambda n, op: f"{n}:{op}", ANY_TEXT, st.sampled_from(["eq", "in", "page", "", "X"])),
)
ANY_FIELDS = st.fixed_dictionaries(
    {},
    optional={
        **dict.fromkeys(OPTIONAL_NAMES, ANY_VALUE),
        "auth_mode": st.one_of(st.sampled_from(["token", "none", "local"]), ANY_VALUE),
        "decision": st.one_of(st.sampled_from(["allow", "deny", "error"]), ANY_VALUE),
        "action": st.one_of(st.sampled_from(["http.request", "artifact.ingest"]), ANY_VALUE),
        "reasons": st.one_of(long_list(ANY_TEXT), ANY_VALUE),
        "params": st.one_of(long_list(PARAM), ANY_VALUE),
        "extra": st.one_of(
            st.dictionaries(ANY_TEXT, ANY_SCALAR, max_size=8),
            st.builds(
                lambda v, n: {f"k{i}": v for i in range(n)}, ANY_SCALAR, st.integers(60, 400)
            ),
            st.just({TRUNCATED: "", DROPPED + "params": 3}),  # a forged mark
            ANY_VALUE,
        ),
        "unknown_field": ANY_VALUE,
    },
)


@SEARCH
@given(raw=ANY_FIELDS)
def test_any_input_bounds_to_fields_the_strict_validator_accepts(raw: dict[str, Any]) -> None:
    out = bound(raw)
    assert set(out) == CALLER_FIELDS
    assert check_fields(out) == out  # never refused
    assert bound(out) == out or TRUNCATED in out["extra"]  # idempotent up to its marks


@SEARCH
@given(raw=ANY_FIELDS)
def test_a_mark_in_extra_is_always_the_bounders_own(raw: dict[str, Any]) -> None:
    out = bound(raw)
    marks = {k: v for k, v in out["extra"].items() if k.startswith("audit.")}
    forged = isinstance(raw.get("extra"), dict) and any(
        isinstance(k, str) and k.startswith("audit.") for k in raw["extra"]
    )
    if forged:
        assert "extra" in str(marks.get(TRUNCATED, ""))
    for key, value in marks.items():
        assert key == TRUNCATED or (key.startswith(DROPPED) and type(value) is int and value > 0)


def test_valid_fields_come_back_equal_and_unmarked() -> None:
    for i in range(20):
        valid = fields(i, params=["country:eq", "limit:page"], purpose="audit")
        assert bound(valid) == valid


def test_each_kind_of_overflow_is_cut_and_marked() -> None:
    out = bound(
        {
            "action": "http.request", "auth_mode": "none", "decision": "deny", "status": 404,
            "route": "GET /" + "x" * 5000,
            "params": [":eq", "k" * 600 + ":eq", "name:eq", "name:EQ"]
                      + [f"p{i}:eq" for i in range(100)],
            "reasons": ["r"] * 70,
            "extra": {f"e{i}": i for i in range(70)} | {"audit.truncated": "nothing"},
        }
    )  # fmt: skip
    assert len(out["route"]) == MAX_TEXT and out["route"].endswith(MARK)
    cut = "k" * (MAX_SHORT - 4) + MARK + ":eq"  # 512 characters, the op kept
    assert out["params"][:4] == [MALFORMED_PARAM, cut, "name:eq", "p0:eq"]
    assert len(out["params"]) == MAX_ITEMS and out["extra"][DROPPED + "params"] == 103 - MAX_ITEMS
    assert len(out["reasons"]) == MAX_ITEMS and out["extra"][DROPPED + "reasons"] == 6
    assert len(out["extra"]) == MAX_ITEMS
    assert out["extra"][DROPPED + "extra"] == 70 - (MAX_ITEMS - 4)
    assert out["extra"][TRUNCATED] == "extra,params,reasons,route"
    check_fields(out)


def test_a_record_of_maximal_escapes_still_fits_one_line() -> None:
    nul = "\x00" * MAX_TEXT  # six bytes each once escaped
    extra = {f"k{i}": nul for i in range(100)}
    out = bound({"action": "http.request", "reasons": [nul] * 100, "extra": extra, "route": nul})
    check_fields(out)
    assert "reasons" in out["extra"][TRUNCATED] and "extra" in out["extra"][TRUNCATED]


@pytest.mark.parametrize("junk", ["\ud800", "a\udfffb", "\x00\n\r", "é✓" * 3000])
def test_bounded_records_seal_and_verify(tmp_path: Path, junk: str) -> None:
    raw = {
        "action": "http.request", "route": f"GET /{junk}", "params": [f"{junk}:eq"],
        "purpose": junk, "request_id": junk, "reasons": [junk], "extra": {junk: junk},
    }  # fmt: skip
    with open_log(tmp_path) as log:
        sealed = log.append_batch([bound(raw)])
    (line,) = (tmp_path / "audit.jsonl").read_bytes().splitlines()
    assert len(line) < MAX_LINE and sealed[0]["seq"] == 1
    assert verify_bytes(read_files(tmp_path)).ok
