"""OpenAPI 3.1 built from the app's own routes and their declarations, so it cannot drift.

Each operation comes from one Quart rule and its view: the methods from the rule, the
summary from the view's docstring, the security requirement from the scope the view
declared (``@requires``), and parameters, body and answers from its ``declare``
(``assay.core.apidoc``). A route without a declaration is an error here, not a gap in
the document. Problem answers are added by what the route can give: 401/403 where a
credential is checked, 400 where it takes input, 404 where its path names something,
413 where it takes a body, 503 everywhere (its audit record could not be written).
Pure over the app's route table.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from typing import Any

from quart import Quart

from assay.core.apidoc import (
    PROBLEM,
    PROBLEM_MEANINGS,
    PROBLEM_SCHEMA,
    Api,
    Header,
    Param,
    Reply,
    Schema,
    api_of,
    ref,
)

_PARAM = re.compile(r"<(?:[a-z]+:)?([a-z_]+)>")

#: ``view -> (security requirement, human scope)``, or None for a public route.
AuthOf = Callable[[Any], tuple[list[dict[str, list[str]]], str] | None]
#: ``(path, problem statuses) -> statuses``: how an app reshapes them (AMR's 403 for 401).
ShapeStatuses = Callable[[str, set[int]], set[int]]

REQUEST_ID = Header(
    {"type": "string", "minLength": 1, "maxLength": 64},
    "The request's id (the client's X-Request-Id, else a fresh one); its audit record carries it.",
    required=True,
)
AUTHENTICATE = Header({"type": "string", "pattern": "^Bearer "}, "Bearer realm.", required=True)
RETRY_AFTER = Header({"type": "string", "pattern": "^[0-9]+$"}, "Seconds to wait.")


def template(rule: str) -> str:
    """``/v1/artifacts/<digest>`` -> ``/v1/artifacts/{digest}``."""
    return _PARAM.sub(r"{\1}", rule)


def scope_of(view: Any) -> tuple[list[dict[str, list[str]]], str] | None:
    """The default ``AuthOf``: the scope ``@requires`` declared (None: ``@public``)."""
    scope = getattr(view, "required_scope", "<undeclared>")
    return None if scope is None else ([{"bearer": [scope]}], scope)


def operations(app: Quart) -> list[tuple[str, str, Any]]:
    """``(METHOD, rule, view)`` for every route the app serves (no HEAD, no OPTIONS)."""
    out: list[tuple[str, str, Any]] = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        view = app.view_functions[rule.endpoint]
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            out.append((method, rule.rule, view))
    return out


def _param(p: Param) -> dict[str, Any]:
    schema: Schema = {"type": "array", "items": p.schema} if p.repeated else p.schema
    out: dict[str, Any] = {"name": p.name, "in": p.where, "required": p.required, "schema": schema}
    if p.repeated:
        out["style"], out["explode"] = "form", True
    if p.description:
        out["description"] = p.description
    return out


def _header(h: Header) -> dict[str, Any]:
    out: dict[str, Any] = {"schema": h.schema, "required": h.required}
    if h.description:
        out["description"] = h.description
    return out


def _reply(reply: Reply) -> dict[str, Any]:
    out: dict[str, Any] = {"description": reply.description}
    if reply.schema is not None:
        out["content"] = {reply.media: {"schema": reply.schema}}
        out["content"].update({media: {"schema": sch} for media, sch in reply.also.items()})
    headers = {"X-Request-Id": REQUEST_ID, **reply.headers}
    out["headers"] = {name: _header(h) for name, h in headers.items()}
    return out


def _problem_statuses(api: Api, rule: str, authenticated: bool) -> set[int]:
    statuses = set(api.problems) | {503}
    has_path = bool(_PARAM.search(rule))
    if authenticated:
        statuses |= {401, 403}
    if api.query or api.body is not None or has_path or api.open_query:
        statuses.add(400)
    if has_path:
        statuses.add(404)
    if api.body is not None:
        statuses.add(413)
    return statuses


def _responses(api: Api, statuses: set[int]) -> dict[str, Any]:
    out = {str(status): _reply(reply) for status, reply in api.replies.items()}
    problem = {"schema": ref("Problem")}
    for status in sorted(statuses):
        entry = out.get(str(status))
        if entry is None:
            extra: dict[str, Header] = {}
            if status == 401:
                extra["WWW-Authenticate"] = AUTHENTICATE
            if status == 429:
                extra["Retry-After"] = RETRY_AFTER
            meaning = PROBLEM_MEANINGS.get(status, "Problem")
            entry = _reply(Reply(meaning, None, PROBLEM, extra))
            out[str(status)] = entry
        entry.setdefault("content", {})[PROBLEM] = problem
    return out


def operation(
    method: str,
    rule: str,
    view: Any,
    api: Api,
    path_params: Mapping[str, Schema],
    auth: tuple[list[dict[str, list[str]]], str] | None,
    shape: ShapeStatuses | None,
) -> dict[str, Any]:
    path = template(rule)
    doc = inspect.cleandoc(view.__doc__ or "")
    summary, _, description = doc.partition("\n")
    params = [
        {"name": n, "in": "path", "required": True, "schema": path_params[n]}
        for n in _PARAM.findall(rule)
    ]
    params += [_param(p) for p in (*api.query, *api.headers)]
    statuses = _problem_statuses(api, rule, auth is not None)
    if shape is not None:
        statuses = shape(path, statuses)
    op: dict[str, Any] = {
        "summary": summary.strip() or view.__name__,
        "operationId": re.sub(r"[^A-Za-z0-9]+", "_", f"{method.lower()} {path}").strip("_"),
        "parameters": params,
        "responses": _responses(api, statuses),
        "security": [] if auth is None else auth[0],
    }
    if description.strip() or api.open_query:
        op["description"] = "\n\n".join(x for x in (description.strip(), api.open_query) if x)
    if auth is not None:
        op["x-required-scope"] = auth[1]
    if api.body is not None:
        body: dict[str, Any] = {
            "required": api.body.required,
            "content": {api.body.media: {"schema": api.body.schema}},
        }
        if api.body.description:
            body["description"] = api.body.description
        op["requestBody"] = body
    return op


def build_openapi(
    app: Quart,
    *,
    title: str,
    version: str,
    path_params: Mapping[str, Schema],
    schemas: Mapping[str, Schema] | None = None,
    auth_of: AuthOf = scope_of,
    shape: ShapeStatuses | None = None,
    security_schemes: Mapping[str, Any] | None = None,
    tag_of: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """The document for every route of ``app`` (each must carry a declaration)."""
    paths: dict[str, dict[str, Any]] = {}
    for method, rule, view in operations(app):
        api = api_of(view)
        if api is None:
            raise RuntimeError(f"{method} {rule} has no API declaration")
        op = operation(method, rule, view, api, path_params, auth_of(view), shape)
        if tag_of is not None:
            op["tags"] = [tag_of(template(rule))]
        paths.setdefault(template(rule), {})[method.lower()] = op
    schemes = {"bearer": {"type": "http", "scheme": "bearer"}, **(security_schemes or {})}
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "securitySchemes": schemes,
            "schemas": {"Problem": PROBLEM_SCHEMA, **(schemas or {})},
        },
    }
