"""Every request leaves exactly one audit record, and no raw sensitive value is in any."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from assay.core.audit.chain import redact
from tests.relay.conftest import Running, build_env, start

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


async def test_sensitive_record_id_is_hashed(tmp_path: Path) -> None:
    env = build_env(tmp_path, people=100)
    household = next(e for e in env.doc["datasets"][0]["entities"] if e["name"] == "household")
    household["fields"][0]["sensitive"] = True  # id, the key
    env.write()
    parts, audit = start(env)
    async with parts.app.test_app() as app:
        r = await app.test_client().get(
            "/v1/datasets/civil/entities/household/records/H0000002", headers=env.headers("all")
        )
    assert r.status_code == 200
    assert "H0000002" not in json.dumps(audit.records)
    key = parts.relay._redact_key
    assert audit.records[-1]["extra"]["hash.id.eq.1"] == redact(key, "H0000002")


async def test_each_request_writes_exactly_one_record_with_its_outcome(running: Running) -> None:
    nid = str(_people(running)[0]["national_id"])
    cases = [
        (f"{PEOPLE}?national_id={nid}", "all", 200, None),
        (f"{PEOPLE}?national_id={nid}", None, 401, "auth.missing_credential"),
        (f"{PEOPLE}?national_id={nid}", "agg", 403, "auth.scope_denied"),
        (f"{PEOPLE}?nope=1&national_id={nid}", "all", 400, "entity.filter_not_allowed"),
        ("/v1/datasets/civil/aggregates/people_by_municipality", "agg", 200, None),
        ("/v1/datasets/ghost", "everything", 404, "resource.not_found"),
        ("/v1/datasets/housing", "all", 404, "resource.not_found"),  # as if it did not exist
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


TEMPLATE = "/v1/datasets/<dataset>/entities/<entity>/records/<record_id>"


@pytest.mark.parametrize(
    ("method", "path", "template"),
    [
        ("GET", "/v1/datasets/civil/entities/person/records/P00000001/x", None),
        ("GET", "/v1/datasets/civil/entities/person/records/P00000001/", None),
        ("GET", "/v1/datasets/civil/entities/person/P00000001", None),
        ("GET", "/P00000001", None),
        ("POST", "/v1/datasets/civil/entities/household/records/P00000001", TEMPLATE),
        ("DELETE", "/v1/datasets/civil/entities/household/records/P00000001", TEMPLATE),
    ],
)
async def test_the_audit_route_never_holds_a_raw_path(
    running: Running, method: str, path: str, template: str | None
) -> None:
    """404 and 405 answers are routed by the framework, not by a handler: their audit
    ``route`` is the template the path matches, or a keyed hash of the path."""
    r = await running.client.open(path, method=method, headers=running.env.headers("all"))
    assert r.status_code in (404, 405)
    record = running.audit.records[-1]
    assert "P00000001" not in json.dumps(record)
    key = running.parts.relay._redact_key
    expected = template or f"unmatched:{redact(key, path)}"
    assert record["route"] == f"{method} {expected}"


async def test_equal_unmatched_paths_share_one_tag_and_others_do_not(running: Running) -> None:
    for path in ("/v1/x/P00000001", "/v1/x/P00000001", "/v1/x/P00000002"):
        await running.get(path)
    a, b, c = (r["route"] for r in running.audit.records[-3:])
    assert a == b != c


async def test_the_431_route_is_a_template_or_a_keyed_hash(running: Running) -> None:
    """The header cap refuses before routing; its record still names no raw path."""
    from assay.core.asgi import HeaderCap
    from tests.relay.conftest import FakeAudit

    sink = FakeAudit()
    cap = HeaderCap(running.parts.app, max_header_bytes=64, audit=sink,  # type: ignore[arg-type]
                    route=running.parts.audit_route())  # fmt: skip
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    for path in ("/v1/datasets/civil/entities/household/records/H0000007", "/v1/H0000007"):
        scope = {"type": "http", "method": "GET", "path": path, "query_string": b"",
                 "headers": [(b"x-pad", b"a" * 100)]}  # fmt: skip
        await cap(scope, receive, send)  # type: ignore[arg-type]
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [431, 431]
    routes = [r["route"] for r in sink.records]
    key = running.parts.relay._redact_key
    assert routes == [f"GET {TEMPLATE}", f"GET unmatched:{redact(key, '/v1/H0000007')}"]
    assert "H0000007" not in json.dumps(sink.records)
