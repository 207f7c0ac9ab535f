"""The AMR-compatible routes, declared (``core.apidoc``): what each takes and answers.

AMR's own published schema (tests/data/amr/openapi.yaml) is the reference the answers
are tested against; these declarations describe the same shapes for assay's document,
with assay's extensions (``integrity``, paging). Pure.
"""

from __future__ import annotations

from assay.core.apidoc import Api, Body, Header, Param, Reply, Schema, nullable, obj, ok, ref
from assay.registry import amr_shape, bodies
from assay.registry.api import NAME_PATTERN, STATES, STR

HEX = {"type": "string", "pattern": "^[a-f0-9]{64}$"}
INT = {"type": "integer", "minimum": 0}
LINE = "^[^\\x00\\r\\n]*$"
_SEGMENT = "[A-Za-z0-9_+-][A-Za-z0-9._+-]*"
#: A relative path inside the registry whose extension is a format assay takes (another
#: extension is AMR's 403, ``amr_shape.require_format``).
_FORMATS = "[Gg][Gg][Uu][Ff]|[Ss][Aa][Ff][Ee][Tt][Ee][Nn][Ss][Oo][Rr][Ss]"
FILENAME_PATTERN = f"^({_SEGMENT}/)*{_SEGMENT}\\.({_FORMATS})$"
#: A JSON value as the body parser bounds it (numbers of at most 32 characters, nesting
#: within ``bodies.MAX_DEPTH``): two levels under the member.
_SCALAR = {"type": ["string", "boolean", "null", "number"], "minimum": -1e30, "maximum": 1e30}
FINGERPRINT = {
    "type": "object",
    "additionalProperties": {
        "anyOf": [
            _SCALAR,
            {"type": "array", "items": _SCALAR},
            {"type": "object", "additionalProperties": _SCALAR},
        ]
    },
}


def line(min_chars: int, max_chars: int) -> Schema:
    return {"type": "string", "pattern": LINE, "minLength": min_chars, "maxLength": max_chars}


SCHEMAS: dict[str, Schema] = {
    "AmrName": {
        "type": "string",
        "pattern": NAME_PATTERN,
        "minLength": 1,
        "maxLength": amr_shape.MAX_NAME,
    },
    "AmrArtifact": obj(
        ["name", "format", "filename", "sha256", "size_bytes", "state"],
        name=STR,
        format={"enum": sorted(amr_shape.FORMATS)},
        filename=STR,
        sha256=HEX,
        size_bytes=INT,
        state={"enum": STATES},
        source=STR,
        promoted_at=STR,
        integrity={"enum": ["ok", "failed"]},
    ),
}
NAME = Param("name", ref("AmrName"), "The model's name.", required=True)
PAGE = Param(
    "limit",
    {"type": "integer", "minimum": 1, "maximum": amr_shape.PAGE_MAX},
    f"Page size (default {amr_shape.PAGE_MAX}).",
)
NEXT = {
    "Link": Header({"type": "string"}, "rel=next: the next page, when there is one."),
    "X-Next-Cursor": Header({"type": "string"}, "The cursor of the next page."),
}
EMPTY = Body(obj(closed=True), description="Nothing, or {} (AMR clients post {}).")
STATUS_NAME = obj(["status", "name"], status=STR, name=STR)
FAILED = obj(
    ["status", "name", "expected", "actual", "error", "safe_to_use"],
    status={"const": "failed"},
    name=STR,
    expected=STR,
    actual=STR,
    error=STR,
    safe_to_use={"const": "false"},
)
CHECKED = obj(
    ["status", "models", "checked"],
    status={"enum": ["ok", "failed"]},
    models={"type": "array", "items": obj(["name", "state", "status"])},
    checked=INT,
)
REASON = Body(
    obj(
        closed=True,
        reason={"type": "string", "format": "assay-text", "maxLength": bodies.MAX_REASON_CHARS},
    )
)
_IDENTITY: dict[str, Schema] = {
    "name": line(1, amr_shape.MAX_NAME),
    "filename": {
        "type": "string",
        "pattern": FILENAME_PATTERN,
        "minLength": 1,
        "maxLength": amr_shape.MAX_FILENAME,
    },
    "sha256": HEX,
    "size_bytes": INT,
    "source": line(0, amr_shape.MAX_SOURCE),
}
EVIDENCE = {
    "type": "object",
    "maxProperties": amr_shape.MAX_EVIDENCE,
    "propertyNames": {"minLength": 1, "maxLength": amr_shape.MAX_EVIDENCE_KEY, "pattern": LINE},
    "additionalProperties": line(0, amr_shape.MAX_EVIDENCE_VALUE),
}

HEALTH = Api({200: ok(obj(["status"], status={"const": "ok"}))})
LIST = Api(
    {200: ok({"type": "array", "items": ref("AmrArtifact")}, headers=NEXT)},
    query=(PAGE, Param("cursor", STR, "X-Next-Cursor of the previous page.")),
)
GET = Api({200: ok(ref("AmrArtifact"))}, query=(NAME,), problems=(404,))
PATH = Api(
    {
        200: ok(
            obj(
                ["path", "sha256", "size_bytes", "storage_contract"],
                path=STR,
                sha256=HEX,
                size_bytes=INT,
                storage_contract={"const": amr_shape.STORAGE_CONTRACT},
            )
        )
    },
    query=(NAME,),
    problems=(404, 409),
)
VERIFY = Api(
    {
        200: ok(
            obj(
                ["status", "name", "sha256", "state", "safe_to_use"],
                status=STR,
                name=STR,
                sha256=HEX,
                state=STR,
                safe_to_use={"enum": ["true", "false"]},
            )
        ),
        409: Reply("The stored bytes do not match (or were removed)", FAILED),
    },
    query=(NAME,),
    body=EMPTY,
    problems=(404, 409),
)
VERIFY_ALL = Api(
    {200: ok(CHECKED), 409: Reply("Some stored bytes do not match", CHECKED)}, body=EMPTY
)
INTEGRITY = Api(
    {
        200: ok(
            obj(
                ["status", "detail", "integrity_failed", "last_sweep"],
                status={"enum": ["ok", "failed", "unknown"]},
                detail=STR,
                integrity_failed=INT,
                last_sweep=nullable({"type": "object"}),
            )
        )
    }
)
MANIFEST = Api(
    {200: ok(obj(["status", "name", "reason"], status={"const": "skipped"}, name=STR, reason=STR))},
    query=(NAME,),
    body=EMPTY,
    problems=(404,),
)
ACQUIRE = Api(
    {201: ok(ref("AmrArtifact"), "Acquired (the upload is quarantined)")},
    body=Body(
        obj(["name", "filename", "sha256", "size_bytes"], closed=True, **_IDENTITY), required=True
    ),
    problems=(404, 409),
)
QUARANTINE = Api({200: ok(STATUS_NAME)}, query=(NAME,), body=EMPTY, problems=(404, 409))
PROMOTE = Api(
    {
        201: ok(ref("AmrArtifact"), "Promoted: trusted"),
        202: ok(ref("AmrArtifact"), "Approval recorded; assay's policy waits for more"),
    },
    body=Body(
        obj(
            ["name", "filename", "sha256"],
            closed=True,
            **_IDENTITY,
            scan_results=EVIDENCE,
            scanner_versions=EVIDENCE,
            policy_version=line(0, amr_shape.MAX_VERSION),
            source_revision=line(0, amr_shape.MAX_VERSION),
            gguf_guard_fingerprint=FINGERPRINT,
            gguf_guard_manifest=line(0, amr_shape.MAX_FILENAME),
        ),
        required=True,
    ),
    problems=(404, 409, 422),
)
REVOKE = Api({200: ok(STATUS_NAME)}, query=(NAME,), body=REASON, problems=(404, 409))
DELETE = Api({200: ok(STATUS_NAME)}, query=(NAME,), body=REASON, problems=(404, 409))
STATS = Api(
    {
        200: ok(
            obj(
                ["model_count", "trusted_count", "state_counts"],
                model_count=INT,
                trusted_count=INT,
                state_counts={"type": "object"},
            )
        )
    }
)
AUDIT = Api(
    {
        200: ok(
            {
                "type": "array",
                "items": obj(
                    [
                        "sequence",
                        "timestamp",
                        "action",
                        "name",
                        "to_state",
                        "sha256",
                        "prev_hash",
                        "hash",
                    ]
                ),
            },
            headers=NEXT,
        )
    },
    query=(
        PAGE,
        Param(
            "after",
            {"type": "string", "pattern": "^[0-9]{1,19}$"},
            "The last sequence number already seen.",
        ),
    ),
)
