"""The relay's routes, declared (``core.apidoc``): parameters, answers and headers.

Filters are per entity (``<field>`` or ``<field>.<op>`` for the fields an entity's
config allows), so a records or aggregate route declares them as an open query that the
planner checks; ``limit``, ``cursor`` and ``fields`` are named. Path names follow the
config's id pattern. Pure.
"""

from __future__ import annotations

from assay.core.apidoc import Api, Header, Param, Reply, Schema, obj, ok
from assay.relay.config import NAME

JOSE = "application/jose"
STR: Schema = {"type": "string"}
INT: Schema = {"type": "integer", "minimum": 0}
DIGITS: Schema = {"type": "string", "pattern": "^[0-9]+$"}

PATH_PARAMS: dict[str, Schema] = {
    "dataset": {"type": "string", "pattern": NAME},
    "entity": {"type": "string", "pattern": NAME},
    "aggregate": {"type": "string", "pattern": NAME},
    "record_id": {"type": "string", "minLength": 1, "maxLength": 256},
}
PURPOSE = Param(
    "X-Purpose",
    {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[^\\x00-\\x1f]*$"},
    "Why the data is read; required by entities that say so (recorded in the audit).",
    where="header",
)
BUDGET = {
    "Assay-Row-Budget-Limit": Header(DIGITS, "Rows per window for this credential."),
    "Assay-Row-Budget-Remaining": Header(DIGITS, "Rows left in this window."),
    "Assay-Row-Budget-Reset": Header(DIGITS, "Seconds until the window ends."),
    "Assay-Row-Budget-Window": Header(DIGITS, "The window's length in seconds."),
}
FILTERS = (
    "Filters: `<field>=<value>` or `<field>.<op>=<value>` (op: eq, in, gte, lte, between) "
    "for the fields and operators the entity's `allowed_filters` list (see the entity's "
    "metadata); any other parameter is refused with 400."
)
PAGE = (
    Param("limit", {"type": "integer", "minimum": 1}, "Page size (at most the entity's)."),
    Param("cursor", STR, "next_cursor of the previous page (bound to the same query)."),
    Param("fields", STR, "Comma-separated public fields to return (default: all)."),
)


def _answer(body: Schema) -> Reply:
    """JSON, or a JWS over it when asked for by name (``Accept: application/jose``)."""
    return Reply(
        "The answer (JSON; a compact JWS when Accept names application/jose)",
        body,
        headers=BUDGET,
        also={JOSE: {"type": "string"}},
    )


RECORDS_BODY = obj(["records"], records={"type": "array", "items": {"type": "object"}})
DATASETS = Api({200: ok(obj(["datasets"], datasets={"type": "array", "items": obj(["id"])}))})
OPENAPI = Api({200: ok({"type": "object", "required": ["openapi", "paths"]})})
DATASET = Api({200: ok(obj(["id"], id=STR))})
ENTITIES = Api({200: ok(obj(["entities"], entities={"type": "array", "items": obj(["name"])}))})
ENTITY = Api({200: ok(obj(["name"], name=STR))})
RECORDS = Api(
    {200: _answer(RECORDS_BODY)},
    query=PAGE,
    headers=(PURPOSE,),
    open_query=FILTERS,
    problems=(406, 414, 429),
)
RECORD = Api(
    {200: _answer({"type": "object"})},
    headers=(PURPOSE,),
    open_query=FILTERS,
    problems=(406, 414, 429),
)
AGGREGATE = Api({200: _answer({"type": "object"})}, open_query=FILTERS, problems=(406, 414, 429))
