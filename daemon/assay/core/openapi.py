"""OpenAPI 3.1 built from the app's own routes, so the description cannot drift.

Each route's summary is its view's docstring and its security requirement is the scope the
view declared with ``@requires``. Pure over the route list it is given.
"""

from __future__ import annotations

import re
from typing import Any

from quart import Quart

_PARAM = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")


def app_routes(app: Quart) -> list[tuple[str, str, str | None, str]]:
    """(method, path template, scope or None, summary) for every Quart route."""
    out: list[tuple[str, str, str | None, str]] = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        scope = getattr(view, "required_scope", "<undeclared>")
        summary = (view.__doc__ or "").strip().splitlines()[0] if view.__doc__ else rule.endpoint
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append((method, rule.rule, scope, summary))
    return out


def build_openapi(
    app: Quart, *, title: str, version: str, streaming: dict[str, tuple[str, str]]
) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    routes = app_routes(app) + [
        (key.split(" ", 1)[0], key.split(" ", 1)[1], scope, summary)
        for key, (scope, summary) in streaming.items()
    ]
    for method, rule, scope, summary in routes:
        path = _PARAM.sub(r"{\1}", rule)
        op: dict[str, Any] = {
            "summary": summary,
            "operationId": f"{method.lower()}_{path.strip('/').replace('/', '_')}",
            "responses": {
                "200": {"description": "OK"},
                "default": {
                    "description": "RFC 9457 problem",
                    "content": {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    },
                },
            },
            "parameters": [
                {"name": n, "in": "path", "required": True, "schema": {"type": "string"}}
                for n in _PARAM.findall(rule)
            ],
        }
        if scope is not None:
            op["security"] = [{"bearer": [scope]}]
            op["x-required-scope"] = scope
        else:
            op["security"] = []
        paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status", "code"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "code": {"type": "string"},
                        "instance": {"type": "string"},
                        "request_id": {"type": "string"},
                    },
                }
            },
        },
    }
