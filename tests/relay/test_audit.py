"""Every request leaves exactly one audit record, and no raw sensitive value is in any."""

from __future__ import annotations

import json

from assay.core.audit.chain import redact
from tests.relay.conftest import Running

PEOPLE = "/v1/datasets/civil/entities/person/records"


def _people(running: Running) -> list[dict[str, object]]:
    table = running.parts.store.get("civil", "people").data
    rows: list[dict[str, object]] = table.slice(0, 5).select(["national_id"]).to_pylist()
    return rows


async def test_sensitive_filter_values_are_only_keyed_hashes(running: Running) -> None:
    people = _people(running)
    nids = [str(p["national_id"]) for p in people]
    await running.get(f"{PEOPLE}?national_id={nids[0]}")
    await running.get(f"{PEOPLE}?national_id.in={','.join(nids[1:4])}")
    await running.get(f"{PEOPLE}?national_id={nids[4]}&enrolled_on.gte=2020-01-01")
    await running.get(f"{PEOPLE}?national_id={nids[4]}", purpose=False)  # refused: no purpose
    await running.get(f"{PEOPLE}?national_id={nids[4]}", key="meta")  # refused: scope
    await running.get(f"{PEOPLE}?national_id={nids[4]}&limit=9999")  # refused: limit
    text = json.dumps(running.audit.records)
    assert not any(n in text for n in nids), "a raw national id reached the audit log"
    key = running.parts.relay._redact_key
    first = running.audit.records[0]["extra"]
    assert first["hash.national_id.eq.1"] == redact(key, nids[0])
    assert first["filters"] == "national_id:eq"
    listed = running.audit.records[1]["extra"]["hash.national_id.in.1"].split(",")
    assert listed == [redact(key, n) for n in nids[1:4]]
    third = running.audit.records[2]
    assert third["extra"]["value.enrolled_on.gte"] == "2020-01-01"  # not sensitive: kept
    assert third["params"] == ["enrolled_on:gte", "national_id:eq"]


async def test_malformed_sensitive_value_is_not_echoed_into_the_audit(running: Running) -> None:
    secret = "SYN-123456789-" + "9" * 300
    r = await running.get(f"{PEOPLE}?national_id={secret}")
    assert r.status_code == 400
    assert secret[:20] not in json.dumps(running.audit.records)


async def test_sensitive_record_id_is_hashed_when_the_key_is_not_exposed(
    running: Running,
) -> None:
    # resident does not expose person_id, so a lookup by it is audited as a hash.
    r = await running.get("/v1/datasets/civil/entities/resident/records/P00000002")
    assert r.status_code == 200
    extra = running.audit.records[-1]["extra"]
    assert "P00000002" not in json.dumps(running.audit.records)
    assert extra["record_id_hash"].startswith("hmac-sha256:")


async def test_each_request_writes_exactly_one_record_with_its_outcome(running: Running) -> None:
    nid = str(_people(running)[0]["national_id"])
    cases = [
        (f"{PEOPLE}?national_id={nid}", "all", 200, None),
        (f"{PEOPLE}?national_id={nid}", None, 401, "auth.missing_credential"),
        (f"{PEOPLE}?national_id={nid}", "agg", 403, "auth.scope_denied"),
        (f"{PEOPLE}?nope=1&national_id={nid}", "all", 400, "entity.filter_not_allowed"),
        ("/v1/datasets/civil/aggregates/people_by_municipality", "agg", 200, None),
        ("/v1/datasets/ghost", "everything", 404, "dataset.not_found"),
        ("/v1/datasets/ghost", "all", 403, "auth.scope_denied"),  # no probing of ids
        ("/no/such/route", "all", 404, "request.not_found"),
    ]
    for i, (path, key, status, code) in enumerate(cases, start=1):
        r = await running.get(path, key=key)
        assert r.status_code == status
        assert len(running.audit.records) == i
        record = running.audit.records[-1]
        assert record["status"] == status and record["error_code"] == code
        assert record["request_id"] == r.headers["X-Request-Id"]
    ok = running.audit.records[0]
    assert ok["action"] == "relay.records" and ok["target"] == "civil/person"
    assert ok["purpose"] == "benefit-eligibility-check"
    assert ok["extra"]["row_count"] == 1 and ok["extra"]["scopes_used"] == "civil:read"
    assert running.audit.records[4]["extra"]["suppressed_groups"] > 0


def test_audit_extra_stays_within_the_record_schema_for_huge_sensitive_lists() -> None:
    from assay.core.audit.schema import MAX_ITEMS, MAX_TEXT
    from assay.relay.planner import Condition, audit_extra

    conditions = [
        Condition(f"f{i}", f"f{i}", "string", "in", tuple(f"v{j}" for j in range(500)), True)
        for i in range(32)
    ]
    extra = audit_extra(conditions, lambda v: redact(b"k" * 32, v))
    assert len(extra) + 10 <= MAX_ITEMS
    assert all(len(v) <= MAX_TEXT for v in extra.values())
    assert "v1" not in " ".join(extra.values()).split(",")
