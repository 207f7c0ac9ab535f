"""Scope-denial matrix: every route against every credential, checked before data."""

from __future__ import annotations

import pytest

from tests.relay.conftest import KEYS, Running

#: (path, the civil scope it needs). ``None``: any valid credential; ``*:metadata``: the
#: metadata scope of at least one dataset (the list shows only those datasets).
ROUTES: list[tuple[str, str | None]] = [
    ("/openapi.json", None),
    ("/v1/datasets", "*:metadata"),
    ("/v1/datasets/civil", "civil:metadata"),
    ("/v1/datasets/civil/entities", "civil:metadata"),
    ("/v1/datasets/civil/entities/household", "civil:metadata"),
    ("/v1/datasets/civil/entities/household/records?limit=2", "civil:read"),
    ("/v1/datasets/civil/entities/household/records/H0000001", "civil:read"),
    ("/v1/datasets/civil/aggregates/people_by_municipality", "civil:aggregate"),
]


@pytest.mark.parametrize(("path", "scope"), ROUTES, ids=[p for p, _ in ROUTES])
@pytest.mark.parametrize("key", sorted(KEYS))
async def test_route_answers_only_with_its_scope(
    running: Running, path: str, scope: str | None, key: str
) -> None:
    r = await running.get(path, key=key)
    body = await r.get_json()
    if scope == "*:metadata":
        allowed = any(s.endswith(":metadata") for s in KEYS[key])
    else:
        allowed = scope is None or scope in KEYS[key]
    # A key that holds none of civil's scopes may not know civil exists: 404, as for a
    # dataset that does not; one that holds some of them is told which scope it lacks.
    knows = any(s.startswith("civil:") for s in KEYS[key])
    if allowed:
        assert r.status_code == 200, body
    elif scope is not None and scope.startswith("civil:") and not knows:
        assert r.status_code == 404, body
        assert body["code"] == "resource.not_found"
    else:
        assert r.status_code == 403, body
        assert body["code"] == "auth.scope_denied"
    assert ("records" not in body and "groups" not in body) or allowed
    record = running.audit.records[-1]
    assert len(running.audit.records) == 1
    assert record["principal"] == key and record["auth_mode"] == "api_key"
    assert record["decision"] == ("allow" if allowed else "deny")
    if scope is not None and not scope.startswith("*") and knows:
        assert record["extra"]["scopes_used"] == scope


@pytest.mark.parametrize(("path", "scope"), ROUTES, ids=[p for p, _ in ROUTES])
@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "auth.missing_credential"),
        ({"Authorization": "Bearer assayrk_not-a-real-key"}, "auth.invalid_credential"),
        ({"X-API-Key": "assayrk_not-a-real-key"}, "auth.invalid_credential"),
        ({"Authorization": "Basic YWRtaW46YWRtaW4="}, "auth.missing_credential"),
        ({"Authorization": "Bearer " + "x" * 600}, "auth.invalid_credential"),
    ],
    ids=["none", "bad-bearer", "bad-api-key", "basic-auth", "oversized"],
)
async def test_route_without_a_valid_credential_is_401(
    running: Running, path: str, scope: str | None, headers: dict[str, str], code: str
) -> None:
    r = await running.client.get(path, headers=headers)
    body = await r.get_json()
    assert r.status_code == 401 and body["code"] == code
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert running.audit.records[-1]["decision"] == "deny"


async def test_api_key_works_as_x_api_key_header_too(running: Running) -> None:
    headers = running.env.headers("read", scheme="x-api-key")
    r = await running.client.get(
        "/v1/datasets/civil/entities/household/records/H0000001", headers=headers
    )
    assert r.status_code == 200


async def test_another_datasets_scopes_reach_nothing_in_this_one(running: Running) -> None:
    r = await running.get("/v1/datasets", key="other")
    assert [d["id"] for d in (await r.get_json())["datasets"]] == ["housing"]
    r = await running.get("/v1/datasets/housing/entities/household/records/H0000001", key="other")
    assert r.status_code == 200
    r = await running.get("/v1/datasets/civil/entities/household/records/H0000001", key="other")
    assert r.status_code == 404  # civil is not even there for this key


async def test_scope_is_checked_before_the_dataset_is_read(running: Running) -> None:
    """A denied request never takes a snapshot (so never touches data)."""
    store = running.parts.store
    taken: list[tuple[str, str]] = []
    original = store.get

    def spy(dataset: str, table: str):  # type: ignore[no-untyped-def]
        taken.append((dataset, table))
        return original(dataset, table)

    store.get = spy  # type: ignore[method-assign]
    r = await running.get("/v1/datasets/civil/entities/household/records?limit=1", key="meta")
    assert r.status_code == 403 and taken == []
    r = await running.get("/v1/datasets/civil/entities/household/records?limit=1", key="read")
    assert r.status_code == 200 and taken == [("civil", "households")]


async def test_health_checks_are_public_and_openapi_is_not(running: Running) -> None:
    assert (await running.client.get("/healthz")).status_code == 200
    assert (await running.client.get("/readyz")).status_code == 200
    assert (await running.client.get("/openapi.json")).status_code == 401


async def test_openapi_documents_every_route_with_its_scope(running: Running) -> None:
    doc = await (await running.get("/openapi.json", key="meta")).get_json()
    paths = doc["paths"]
    for path in (
        "/v1/datasets/{dataset}/entities/{entity}/records",
        "/v1/datasets/{dataset}/entities/{entity}/records/{record_id}",
        "/v1/datasets/{dataset}/aggregates/{aggregate}",
    ):
        op = paths[path]["get"]
        assert op["security"] and "scope" in op["x-required-scope"]
    assert paths["/healthz"]["get"]["security"] == []
    assert "apiKey" in doc["components"]["securitySchemes"]


@pytest.mark.parametrize("key", ["other", "meta", "read"])
async def test_dataset_ids_cannot_be_probed_by_a_partial_credential(
    running: Running, key: str
) -> None:
    """A dataset outside a caller's scopes answers as one that does not exist (the
    property over every route is in test_access.py)."""
    headers = running.env.headers(key)
    hidden = "housing" if key != "other" else "civil"
    ghost = await running.client.get("/v1/datasets/ghost/aggregates/x", headers=headers)
    known = await running.client.get(f"/v1/datasets/{hidden}/aggregates/people_by_municipality",
                                     headers=headers)  # fmt: skip
    assert ghost.status_code == known.status_code == 404
    assert (await ghost.get_json())["code"] == (await known.get_json())["code"]


async def test_a_caller_who_sees_every_dataset_learns_a_name_is_unknown(
    running: Running,
) -> None:
    headers = running.env.headers("everything")
    r = await running.client.get("/v1/datasets/ghost", headers=headers)
    assert r.status_code == 404 and (await r.get_json())["code"] == "resource.not_found"
