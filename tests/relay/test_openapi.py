"""The relay's OpenAPI document is its route table, and OPTIONS says the same.

Every rule the app serves is documented with exactly its methods (and the reverse);
every route whose parameters are all named refuses an undocumented one with 400 once
the caller is authenticated; a route with per-entity filters documents them as such;
``OPTIONS`` on every path lists exactly its methods.
"""

from __future__ import annotations

from assay.core.apidoc import api_of
from assay.core.openapi import operations, template
from tests.relay.conftest import Running

CONCRETE = {"{dataset}": "civil", "{entity}": "person", "{aggregate}": "people_by_municipality",
            "{record_id}": "P0001"}  # fmt: skip


def concrete(path: str) -> str:
    for k, v in CONCRETE.items():
        path = path.replace(k, v)
    return path


async def test_every_relay_route_is_documented_with_exactly_its_methods(running: Running) -> None:
    app = running.parts.app
    doc = await (await running.get("/openapi.json", key="case")).get_json()
    routed = {(m.lower(), template(rule)) for m, rule, _view in operations(app)}
    assert routed == {(m, p) for p, ops in doc["paths"].items() for m in ops}
    for _m, rule, view in operations(app):
        assert api_of(view) is not None, rule
    records = doc["paths"]["/v1/datasets/{dataset}/entities/{entity}/records"]["get"]
    assert {p["name"] for p in records["parameters"]} >= {"limit", "cursor", "fields",
                                                           "X-Purpose"}  # fmt: skip
    assert "allowed_filters" in records["description"]
    assert {"200", "400", "401", "403", "404", "406", "414", "429", "503"} <= set(
        records["responses"]
    )
    assert "application/jose" in records["responses"]["200"]["content"]
    assert "Assay-Row-Budget-Remaining" in records["responses"]["200"]["headers"]


async def test_an_undocumented_parameter_is_refused_after_authentication(
    running: Running,
) -> None:
    app = running.parts.app
    for method, rule, view in operations(app):
        api = api_of(view)
        assert api is not None
        if api.open_query is not None:
            continue  # filters: the planner refuses an unknown one (tests/relay/test_filters.py)
        path = concrete(template(rule))
        r = await running.client.open(path, method=method, query_string={"zz_undocumented": "1"},
                                      headers=running.env.headers("case"))  # fmt: skip
        assert r.status_code == 400, (path, r.status_code)
        assert "unknown query parameters" in (await r.get_json())["detail"]
        if getattr(view, "deferred_auth", False):  # not before: a stranger learns nothing
            r = await running.client.open(path, method=method,
                                          query_string={"zz_undocumented": "1"})  # fmt: skip
            assert r.status_code == 401, (path, r.status_code)


async def test_options_lists_exactly_each_relay_routes_methods(running: Running) -> None:
    by_path: dict[str, set[str]] = {}
    for rule in running.parts.app.url_map.iter_rules():
        if rule.endpoint != "static":
            by_path.setdefault(template(rule.rule), set()).update(rule.methods or set())
    for path, methods in by_path.items():
        # A reader may not aggregate the population it reads (assay.relay.conflicts).
        key = "stats" if "/aggregates" in path else "case"
        r = await running.client.options(concrete(path), headers=running.env.headers(key))
        assert "Allow" in r.headers, (path, r.status_code)
        allow = {m.strip() for m in r.headers["Allow"].split(",")}
        assert allow == methods, (path, allow)
