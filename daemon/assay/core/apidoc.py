"""What a route declares about its requests and answers, next to the route itself.

Why declarations on the view: the OpenAPI document (``assay.core.openapi``) is built
from them and the web edge enforces them, so the document cannot claim a parameter the
route refuses, nor hide one it takes. ``declare`` attaches an ``Api`` to a view; the
edge refuses any query parameter the ``Api`` does not name (``unknown_query``) before
the handler runs, and a body's known fields are the declared object's properties
(``body_fields``). Values are JSON Schema (2020-12, as OpenAPI 3.1 uses), so one
schema both documents a value and is what a client can validate against. Pure.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from assay.core.errors import BadRequest
from assay.core.problem import MAX_DETAIL_CHARS, MAX_INSTANCE_CHARS, MAX_REASONS

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
Schema = dict[str, Any]

JSON = "application/json"
PROBLEM = "application/problem+json"
OCTETS = "application/octet-stream"

#: One line of text as ``assay.registry.validate.check_text`` accepts it (no control,
#: format, surrogate, private-use or unassigned character, no line separator). JSON
#: Schema cannot spell Unicode categories, so this names the rule as a ``format``:
#: validators that do not know it accept any string; the schemathesis suite generates
#: values by it (``tests/e2e/schemathesis_hooks.py``).
TEXT_FORMAT = "assay-text"


@dataclass(frozen=True)
class Param:
    """A query parameter or request header the route reads.

    ``repeated``: given any number of times (an array, one ``name=value`` per item).
    """

    name: str
    schema: Schema
    description: str = ""
    required: bool = False
    repeated: bool = False
    where: str = "query"


@dataclass(frozen=True)
class Header:
    """A response header: ``required`` when every answer with that status carries it."""

    schema: Schema
    description: str = ""
    required: bool = False


@dataclass(frozen=True)
class Body:
    """The request body: its media type and schema (an object's properties are its
    only known fields)."""

    schema: Schema
    media: str = JSON
    required: bool = False
    description: str = ""


@dataclass(frozen=True)
class Reply:
    """One answer status: its media type and body schema (None: no body described)."""

    description: str
    schema: Schema | None = None
    media: str = JSON
    headers: Mapping[str, Header] = field(default_factory=dict)
    #: Other media types this status may answer in, with their schemas.
    also: Mapping[str, Schema] = field(default_factory=dict)


@dataclass(frozen=True)
class Api:
    """Everything a route declares: parameters, body, answers and the problem
    statuses it can give beyond the ones every route of its kind gives."""

    replies: Mapping[int, Reply]
    query: tuple[Param, ...] = ()
    headers: tuple[Param, ...] = ()
    body: Body | None = None
    problems: tuple[int, ...] = ()
    #: Query parameters this route reads without naming them in advance (the relay's
    #: per-entity filters): described here, checked by the route itself.
    open_query: str | None = None


def declare(
    replies: Mapping[int, Reply],
    *,
    query: Iterable[Param] = (),
    headers: Iterable[Param] = (),
    body: Body | None = None,
    problems: Iterable[int] = (),
    open_query: str | None = None,
) -> Callable[[F], F]:
    """Attach an ``Api`` to a view (read by the document builder and the web edge)."""
    api = Api(dict(replies), tuple(query), tuple(headers), body, tuple(problems), open_query)

    def mark(fn: F) -> F:
        fn.api = api  # type: ignore[attr-defined]
        return fn

    return mark


def attach(api: Api) -> Callable[[F], F]:
    """Attach a declaration built elsewhere (a route table's module) to a view."""

    def mark(fn: F) -> F:
        fn.api = api  # type: ignore[attr-defined]
        return fn

    return mark


def api_of(view: object) -> Api | None:
    api = getattr(view, "api", None)
    return api if isinstance(api, Api) else None


def unknown_query(api: Api, names: Iterable[str]) -> None:
    """Refuse query parameters the route did not declare (``BadRequest``)."""
    if api.open_query is not None:
        return
    known = {p.name for p in api.query}
    unknown = sorted(set(names) - known)
    if unknown:
        shown = ", ".join(repr(n[:40]) for n in unknown[:5])
        raise BadRequest(f"unknown query parameters: {shown}")


def body_fields(api: Api) -> frozenset[str]:
    """The declared body object's fields: the only keys its parser accepts."""
    if api.body is None:
        return frozenset()
    return frozenset(api.body.schema.get("properties", {}))


# -- schema helpers ------------------------------------------------------------------------


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def text(max_chars: int, *, min_chars: int = 0) -> Schema:
    """One line of human text, bounded (``TEXT_FORMAT``)."""
    return {"type": "string", "format": TEXT_FORMAT, "minLength": min_chars, "maxLength": max_chars}


def obj(required: Iterable[str] = (), closed: bool = False, **props: Schema) -> Schema:
    """An object schema; ``closed``: no other member is allowed."""
    out: Schema = {"type": "object", "properties": props}
    req = sorted(required)
    if req:
        out["required"] = req
    if closed:
        out["additionalProperties"] = False
    return out


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def ok(
    schema: Schema | None, description: str = "OK", headers: Mapping[str, Header] | None = None
) -> Reply:
    return Reply(description, schema, JSON, dict(headers or {}))


PROBLEM_SCHEMA: Schema = {
    "type": "object",
    "description": "RFC 9457 problem details with assay's stable error code.",
    "required": ["type", "title", "status", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 100, "maximum": 599},
        "detail": {"type": "string", "maxLength": MAX_DETAIL_CHARS},
        "code": {"type": "string", "pattern": "^[a-z0-9_]+(\\.[a-z0-9_]+)+$"},
        "instance": {"type": "string", "maxLength": MAX_INSTANCE_CHARS},
        "instance_truncated": {"type": "boolean"},
        "request_id": {"type": "string"},
        "reasons": {
            "type": "array",
            "maxItems": MAX_REASONS,
            "items": {"type": "string", "maxLength": MAX_DETAIL_CHARS},
        },
    },
}

#: The health routes every daemon serves (``core.web.add_health_routes``).
HEALTH_API = Api({200: Reply("Alive", obj(["status"], status={"const": "ok"}))})
_READY = obj(
    ["ready", "failing"],
    ready={"type": "boolean"},
    failing={"type": "array", "items": {"type": "string"}},
    checks={"type": "object"},
)
READY_API = Api({200: Reply("Ready", _READY), 503: Reply("Not ready", _READY)})

#: What each problem status means, for its description in the document.
PROBLEM_MEANINGS: Mapping[int, str] = {
    400: "The request is malformed (request.*): parameters, body or path.",
    401: "No credential, or one that does not authenticate (auth.*).",
    403: "The credential lacks the scope, or the artifact is not trusted.",
    404: "Nothing by that name or digest (or nothing this credential may see).",
    405: "The path does not take this method (Allow lists the ones it does).",
    406: "The answer cannot be given in the media type asked for.",
    409: "The request conflicts with the current state (state, integrity).",
    413: "The body is larger than the daemon accepts.",
    414: "The query string is larger than the daemon accepts.",
    415: "The body's media type is not one the route takes.",
    422: "The content was refused (format gate, policy, digest mismatch).",
    429: "A budget is spent; Retry-After says when to ask again.",
    503: "The daemon cannot answer now (audit record not written, busy).",
    507: "No room to store the upload (storage.full).",
}
