"""Attacks on the relay's access rules: probing names, lookups past required filters,
cursors handed between credentials, and entities with access of their own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.relay.conftest import KEYS, RelayEnv, Running, build_env, start

ROUTES = [
    "/v1/datasets/{d}",
    "/v1/datasets/{d}/entities",
    "/v1/datasets/{d}/entities/{e}",
    "/v1/datasets/{d}/entities/{e}/records",
    "/v1/datasets/{d}/entities/{e}/records/{id}",
    "/v1/datasets/{d}/aggregates/{a}",
]
#: Real names, by dataset: what a probe may try to find out about.
ENTITIES = {"civil": ["person", "household", "resident", "case"], "housing": ["household"]}
AGGREGATES = {"civil": ["people_by_municipality", "cases_by_status"], "housing": []}
#: Entities and aggregates with access of their own, and the scopes that make them known.
OWN_ACCESS = {"case": {"case:metadata", "case:read", "case:aggregate"}}
AGG_SOURCE = {"people_by_municipality": "resident", "cases_by_status": "case"}
DATASET_SCOPES = {d: {f"{d}:metadata", f"{d}:read", f"{d}:aggregate"} for d in ENTITIES}

ghost_names = st.from_regex(r"\A[a-z][a-z0-9_]{0,24}\Z").filter(
    lambda n: n not in ENTITIES and all(n not in v for v in (*ENTITIES.values(),
                                                              *AGGREGATES.values()))
)  # fmt: skip


def knows(key: str, dataset: str, entity: str | None = None) -> bool:
    held = set(KEYS[key])
    if dataset not in ENTITIES or not held & DATASET_SCOPES[dataset]:
        return False
    if entity is None:
        return True
    if entity not in ENTITIES[dataset]:
        return False
    return entity not in OWN_ACCESS or bool(held & OWN_ACCESS[entity])


def normalized(status: int, headers: dict[str, str], body: bytes, path: str) -> Any:
    """What a caller can compare between two answers, minus what it sent itself (the
    path, echoed as ``instance``) and the per-request id."""
    head = {k.lower(): v for k, v in headers.items() if k.lower() != "x-request-id"}
    length = int(head.pop("content-length", "0"))
    doc = json.loads(body) if body else None
    if isinstance(doc, dict):
        assert doc.pop("instance") == path
        doc.pop("request_id")
    # The body's length less the echoed path: no other byte may depend on the name.
    return status, head, doc, length - len(json.dumps(path)) + 2


@pytest.fixture(scope="module")
def probe_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RelayEnv, Any]]:
    env = build_env(tmp_path_factory.mktemp("probe"), people=200)
    parts, _audit = start(env)
    yield env, parts


def _ask(env: RelayEnv, app: Any, method: str, path: str, key: str, extra: dict[str, str]
         ) -> Any:  # fmt: skip
    async def go() -> Any:
        client = app.test_client()
        r = await client.open(path, method=method, headers=env.headers(key) | extra)
        return normalized(r.status_code, dict(r.headers), await r.get_data(), path.split("?")[0])

    return trio.run(go)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    route=st.sampled_from(ROUTES),
    key=st.sampled_from(sorted(KEYS)),
    method=st.sampled_from(["GET", "HEAD", "OPTIONS"]),
    query=st.sampled_from(["", "?limit=2", "?status=active", "?cursor=AAAA", "?nope=1"]),
    extra=st.sampled_from([{}, {"Accept": "application/jose"}, {"X-Purpose": ""}]),
    data=st.data(),
)
def test_a_dataset_outside_scope_answers_like_one_that_does_not_exist(
    probe_env: tuple[RelayEnv, Any],
    route: str,
    key: str,
    method: str,
    query: str,
    extra: dict[str, str],
    data: Any,
) -> None:
    """Any name this key may not know of (a dataset outside its scopes, an entity or an
    aggregate with access of its own) answers byte for byte like a name that does not
    exist, on every dataset route, method and query: same status, code, headers, body."""
    env, parts = probe_env
    dataset = data.draw(st.sampled_from(sorted(ENTITIES)), "dataset")
    # The names with access of their own are drawn more often: they are the hard case.
    entities = ENTITIES[dataset] + [e for e in ENTITIES[dataset] if e in OWN_ACCESS] * 3
    aggregates = AGGREGATES[dataset] + ["cases_by_status"] * 3
    names = {
        "d": dataset,
        "e": data.draw(st.sampled_from(entities), "entity"),
        "a": data.draw(st.sampled_from(aggregates), "agg"),
        "id": data.draw(st.sampled_from(["H0000001", "P00000001", "x"]), "id"),
    }
    slots = [s for s in ("d", "e", "a") if "{" + s + "}" in route]
    slot = data.draw(st.sampled_from(slots + slots[1:] * 2), "slot")  # deeper slots more
    real = dict(names)
    ghost = dict(names, **{slot: data.draw(ghost_names, "ghost")})
    entity = real["e"] if "{e}" in route else AGG_SOURCE.get(real["a"]) if "{a}" in route else None
    hidden = not knows(key, real["d"], entity) or (
        "{a}" in route and real["a"] not in AGGREGATES[real["d"]]
    )
    if slot != "d" and not knows(key, real["d"]):
        hidden = True
    if not hidden:
        event("known: nothing to compare")
        return  # the key may know of every name here: nothing to hide
    event(f"hidden, probed through {slot!r}")
    real_answer = _ask(env, parts.app, method, route.format(**real) + query, key, extra)
    ghost_answer = _ask(env, parts.app, method, route.format(**ghost) + query, key, extra)
    assert real_answer == ghost_answer
    assert real_answer[0] == 404
    if method != "HEAD" and real_answer[2] is not None:
        assert real_answer[2]["code"] == "resource.not_found"
        assert "required_scope" not in real_answer[2]


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("/v1/datasets/housing", "read"),
        ("/v1/datasets/civil/entities/household/records?limit=1", "other"),
        ("/v1/datasets/civil/entities/case", "all"),
        ("/v1/datasets/civil/entities/case/records/H0000001", "everything"),
        ("/v1/datasets/civil/aggregates/cases_by_status", "agg"),
    ],
)
async def test_a_hidden_name_is_never_named_in_the_refusal(
    running: Running, path: str, key: str
) -> None:
    r = await running.get(path, key=key)
    body = await r.get_json()
    assert r.status_code == 404 and body["code"] == "resource.not_found"
    text = json.dumps({k: v for k, v in body.items() if k != "instance"})
    assert not any(s in text for s in ("housing", "civil", "case", "scope"))


# --- 5: a lookup by id is the records query key=id, with its required filters ------------


async def test_record_lookup_obeys_required_filters_and_purpose(running: Running) -> None:
    table = running.parts.store.get("civil", "people").data
    row = table.slice(3, 1).to_pylist()[0]
    pid, nid = row["person_id"], row["national_id"]
    person = "/v1/datasets/civil/entities/person/records/"
    # person requires national_id and does not filter by id: no lookup by id at all,
    # with or without the purpose header, and nothing of the record in the answer.
    for kw in ({}, {"purpose": False}):
        r = await running.get(person + pid, **kw)
        body = await r.get_json()
        assert r.status_code == 404 and body["code"] == "entity.lookup_not_allowed", body
        assert nid not in json.dumps(body)
    # resident (the anonymous view) exposes no id: a person id must not reach it.
    r = await running.get("/v1/datasets/civil/entities/resident/records/" + pid)
    assert (await r.get_json())["code"] == "entity.lookup_not_allowed"


@pytest.fixture
async def strict_household(tmp_path: Path) -> Any:
    """household with a required filter and a purpose header on top of its id filter."""
    env = build_env(tmp_path, people=200)
    entity = next(e for e in env.doc["datasets"][0]["entities"] if e["name"] == "household")
    entity["required_filters"] = ["municipality"]
    entity["require_purpose_header"] = True
    env.write()
    parts, audit = start(env)
    async with parts.app.test_app() as app:
        yield Running(env, parts, audit, app.test_client())


async def test_a_lookup_needs_the_required_filters_and_a_miss_looks_like_a_mismatch(
    strict_household: Running,
) -> None:
    running = strict_household
    row = running.parts.store.get("civil", "households").data.slice(0, 1).to_pylist()[0]
    hid, muni = row["household_id"], row["municipality"]
    base = f"/v1/datasets/civil/entities/household/records/{hid}"
    r = await running.get(base)
    assert (await r.get_json())["code"] == "entity.filter_required"
    r = await running.get(f"{base}?municipality={muni}", purpose=False)
    assert (await r.get_json())["code"] == "request.purpose_required"
    ok = await running.get(f"{base}?municipality={muni}")
    assert ok.status_code == 200 and (await ok.get_json())["record"]["id"] == hid
    wrong = await running.get(f"{base}?municipality=M99")
    missing = await running.get(f"/v1/datasets/civil/entities/household/records/H9999999"
                                f"?municipality={muni}")  # fmt: skip
    a, b = await wrong.get_json(), await missing.get_json()
    assert wrong.status_code == missing.status_code == 404
    assert {k: v for k, v in a.items() if k not in ("instance", "request_id")} == {
        k: v for k, v in b.items() if k not in ("instance", "request_id")
    }
    r = await running.get(f"{base}?municipality={muni}&id={hid}")
    assert (await r.get_json())["code"] == "entity.filter_duplicate"
    # Other allowed filters narrow a lookup as they narrow a page; others are refused.
    assert (await running.get(f"{base}?municipality={muni}&size.gte=1")).status_code == 200
    r = await running.get(f"{base}?municipality={muni}&size.gte=1000")
    assert (await r.get_json())["code"] == "record.not_found"
    r = await running.get(f"{base}?municipality={muni}&head_person_id=P1")
    assert (await r.get_json())["code"] == "entity.filter_not_allowed"
    r = await running.get(f"{base}?municipality={muni}&limit=1")
    assert (await r.get_json())["code"] == "request.invalid"


async def test_an_anonymous_view_is_not_in_source_order(running: Running) -> None:
    """Two views of one table in one order line up row by row: the anonymous view's
    rows would then be linked to the identified view's ids by position alone."""
    people = running.parts.store.get("civil", "people").data
    muni = people.column("municipality")[0].as_py()
    source = [
        {k: r[k] for k in ("municipality", "sex", "enrolled", "monthly_income")}
        for r in people.to_pylist()
        if r["municipality"] == muni
    ]
    got: list[dict[str, Any]] = []
    path = f"/v1/datasets/civil/entities/resident/records?municipality={muni}&limit=100"
    cursor = ""
    for _ in range(50):
        r = await running.get(path + cursor)
        body = await r.get_json()
        got += body["records"]
        if body["next_cursor"] is None:
            break
        cursor = "&cursor=" + body["next_cursor"]
    key = json.dumps
    assert sorted(map(key, got)) == sorted(map(key, source))  # every row, once
    assert len(source) > 5 and got != source  # but not in the order of the source


# --- 8: cursors are bound to the credential ----------------------------------------------


async def test_a_cursor_from_another_key_is_refused(running: Running) -> None:
    path = "/v1/datasets/civil/entities/household/records?limit=2"
    first = await (await running.get(path, key="all")).get_json()
    token = first["next_cursor"]
    assert token
    mine = await running.get(f"{path}&cursor={token}", key="all")
    assert mine.status_code == 200
    for other in ("read", "case"):  # both may read this entity; neither owns the cursor
        r = await running.get(f"{path}&cursor={token}", key=other)
        assert r.status_code == 400
        assert (await r.get_json())["code"] == "entity.cursor_invalid"


# --- 9: entities with access of their own ------------------------------------------------


@pytest.mark.parametrize(
    ("key", "meta", "read", "agg"),
    [
        ("all", 404, 404, 404),  # civil's scopes alone: the entity is not even there
        ("case_meta", 200, 403, 403),  # knows of it, may read its metadata only
        ("case_only", 200, 403, 403),  # all of case's scopes, but not civil:read/aggregate
        ("case", 200, 200, 403),  # reads case: may not aggregate it too (conflicts)
        ("case_stats", 200, 403, 200),  # aggregates case: reads none of it
    ],
)
async def test_an_entity_with_its_own_access_needs_its_scope_and_the_datasets(
    running: Running, key: str, meta: int, read: int, agg: int
) -> None:
    base = "/v1/datasets/civil"
    r = await running.get(f"{base}/entities/case", key=key)
    assert r.status_code == meta
    r = await running.get(f"{base}/entities/case/records?limit=3", key=key)
    assert r.status_code == read, await r.get_json()
    r = await running.get(f"{base}/entities/case/records/H0000001", key=key)
    assert r.status_code == read
    r = await running.get(f"{base}/aggregates/cases_by_status", key=key)
    assert r.status_code == agg
    if agg == 403:
        assert (await r.get_json())["code"] == "auth.scope_denied"
    doc = await (await running.get(base, key=key)).get_json()
    listed = [e["name"] for e in doc["entities"]]
    aggs = [a["id"] for a in doc["aggregates"]]
    entities = await (await running.get(f"{base}/entities", key=key)).get_json()
    assert ("case" in listed) == (meta == 200) == ("cases_by_status" in aggs)
    assert [e["name"] for e in entities["entities"]] == listed


async def test_both_scopes_are_audited_for_an_entity_with_access(running: Running) -> None:
    r = await running.get("/v1/datasets/civil/entities/case/records?limit=1", key="case")
    assert r.status_code == 200
    assert running.audit.records[-1]["extra"]["scopes_used"] == "civil:read,case:read"


def test_entity_access_is_checked_like_dataset_access(tmp_path: Path) -> None:
    from assay.core.errors import ConfigError
    from assay.relay.config import parse_config

    env = build_env(tmp_path, people=50)
    civil = env.doc["datasets"][0]
    case = next(e for e in civil["entities"] if e["name"] == "case")
    case["access"]["read_scope"] = case["access"]["metadata_scope"]
    import yaml

    with pytest.raises(ConfigError, match="must differ"):
        parse_config(yaml.safe_dump(env.doc))
    case["access"]["read_scope"] = "case:read"
    case["access"]["colour"] = "red"
    with pytest.raises(ConfigError, match="colour"):
        parse_config(yaml.safe_dump(env.doc))
    del case["access"]["colour"]
    env.doc["auth"]["api_keys"][0]["scopes"].append("nobody:uses")
    with pytest.raises(ConfigError, match="no dataset or entity uses"):
        parse_config(yaml.safe_dump(env.doc))
