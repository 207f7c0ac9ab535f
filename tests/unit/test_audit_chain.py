"""Canonical JSON, sealing, the line layout, redaction and the record schema."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from assay.core.audit import chain, schema
from assay.core.audit.chain import GENESIS, canonical, encode_line, redact, seal, seal_line
from assay.core.audit.verify import BREAK_KINDS
from assay.core.errors import BadRequest
from tests.unit.audit_util import KEY, OTHER_KEY, TS, fields


def _sealed(seq: int = 1, prev: str = GENESIS, **kw: Any) -> tuple[dict[str, Any], bytes]:
    return seal_line(KEY, prev, seq, TS, {**fields(seq, **kw), "log_id": "assay"})


def test_canonical_is_sorted_compact_utf8_and_refuses_nan() -> None:
    assert canonical({"b": 1, "a": [1, "é"], "c": None}) == '{"a":[1,"é"],"b":1,"c":null}'.encode()
    assert canonical({"z": {"y": 1, "x": 2}}) == b'{"z":{"x":2,"y":1}}'
    with pytest.raises(ValueError):
        canonical({"x": float("nan")})
    with pytest.raises(ValueError):
        canonical({"x": float("inf")})


def test_record_hash_is_domain_separated_hmac_over_canonical_body() -> None:
    rec, _line = _sealed()
    body = {k: v for k, v in rec.items() if k != "record_hash"}
    expected = hmac.new(KEY, b"assay-audit-v1\x00" + canonical(body), hashlib.sha256).hexdigest()
    assert rec["record_hash"] == expected
    assert rec["v"] == 1 and rec["seq"] == 1 and rec["prev_hash"] == GENESIS and rec["ts"] == TS
    # The body covers seq and prev_hash, so the same fields chain differently elsewhere.
    rec2, _ = _sealed(seq=2, prev=rec["record_hash"])
    assert rec2["record_hash"] != rec["record_hash"]
    assert (
        seal(OTHER_KEY, GENESIS, 1, TS, {**fields(1), "log_id": "assay"})["record_hash"] != expected
    )


def test_line_is_body_with_record_hash_last() -> None:
    rec, line = _sealed()
    assert line.endswith(b'"}\n') and line.count(b"\n") == 1
    assert json.loads(line) == rec
    parts = chain.split_line(line[:-1])
    assert parts is not None
    body, digest = parts
    assert digest.decode() == rec["record_hash"]
    assert body == canonical({k: v for k, v in rec.items() if k != "record_hash"})
    assert encode_line(rec) == line
    assert chain.split_line(b'{"a":1}') is None


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"auth_mode": "root"}, "auth_mode"),
        ({"decision": "maybe"}, "decision"),
        ({"action": "Artifact Promote"}, "action"),
        ({"status": 99}, "status"),
        ({"status": True}, "status"),
        ({"reasons": "not a list"}, "reasons"),
        ({"params": ["q:secret value"]}, "params"),
        ({"params": ["noop"]}, "params"),
        ({"extra": {"x": [1, 2]}}, "extra"),
        ({"extra": {"x": float("nan")}}, "extra"),
        ({"target": 5}, "target"),
        ({"target": "x" * 5000}, "target"),
        ({"purpose": "\ud800"}, "UTF-8"),
    ],
)
def test_check_fields_refuses_bad_values(change: dict[str, Any], why: str) -> None:
    good = fields(1)
    with pytest.raises(BadRequest) as err:
        schema.check_fields({**good, **change})
    assert why in err.value.detail


def test_check_fields_refuses_missing_and_unknown_and_oversized() -> None:
    good = fields(1)
    missing = {k: v for k, v in good.items() if k != "purpose"}
    with pytest.raises(BadRequest, match="missing field"):
        schema.check_fields(missing)
    with pytest.raises(BadRequest, match="unknown field"):
        schema.check_fields({**good, "seq": 5})
    with pytest.raises(BadRequest, match="exceed"):
        schema.check_fields({**good, "reasons": ["\x01" * 4000] * 60})


def test_check_fields_copies_containers() -> None:
    good = fields(1)
    copy = schema.check_fields(good)
    good["reasons"].append("later")
    good["extra"]["later"] = 1
    assert "later" not in copy["reasons"] and "later" not in copy["extra"]


def test_make_fields_defaults_are_an_offline_local_action() -> None:
    f = schema.make_fields("token.create", target="admin")
    assert f["auth_mode"] == "local" and f["route"] is None and f["principal"] is None
    assert f["decision"] == "allow" and f["params"] == [] and f["extra"] == {}
    assert set(f) == schema.CALLER_FIELDS


def test_record_problem_finds_each_kind_of_damage() -> None:
    rec, _line = _sealed()
    assert schema.record_problem(rec) is None
    assert schema.record_problem([]) == "record is not a JSON object"
    for name in ("v", "seq", "ts", "log_id", "prev_hash", "record_hash"):
        broken = dict(rec)
        broken[name] = "not valid!"
        assert schema.record_problem(broken) is not None, name
    dropped = {k: v for k, v in rec.items() if k != "extra"}
    assert "missing field(s) extra" in str(schema.record_problem(dropped))
    assert schema.record_problem({**rec, "seq": 0}) is not None
    assert schema.record_problem({**rec, "v": True}) is not None
    assert schema.record_problem({**rec, "auth_mode": ["token"]}) is not None  # unhashable


def test_seal_refuses_what_the_verifier_would_refuse() -> None:
    with pytest.raises(BadRequest):
        seal(KEY, GENESIS, 0, TS, {**fields(1), "log_id": "assay"})
    with pytest.raises(BadRequest):
        seal(KEY, GENESIS, 1, "yesterday", {**fields(1), "log_id": "assay"})
    with pytest.raises(BadRequest):
        seal(KEY, "abc", 1, TS, {**fields(1), "log_id": "assay"})


def test_redact_is_keyed_deterministic_and_not_a_chain_mac() -> None:
    tag = redact(KEY, "alice@example.com")
    assert tag.startswith("hmac-sha256:") and len(tag) == len("hmac-sha256:") + 64
    assert tag == redact(KEY, b"alice@example.com")
    assert tag != redact(OTHER_KEY, "alice@example.com")
    assert tag != redact(KEY, "bob@example.com")
    # Different domain from the chain: the same bytes never give the same MAC.
    assert tag.removeprefix("hmac-sha256:") != chain.record_hash(KEY, b"alice@example.com")


def test_format_ts_is_utc_with_milliseconds() -> None:
    when = datetime(2026, 1, 2, 4, 4, 5, 678901, tzinfo=timezone(timedelta(hours=1)))
    assert chain.format_ts(when) == TS
    assert chain.format_ts(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000Z"


def test_break_kinds_are_exactly_the_documented_ones() -> None:
    assert {
        "malformed_line", "self_mismatch", "link_mismatch", "seq_gap", "truncated",
        "checkpoint_mismatch", "bad_signature", "unknown_key",
    } == BREAK_KINDS  # fmt: skip
