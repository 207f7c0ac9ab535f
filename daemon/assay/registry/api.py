"""The registry's own routes, declared: parameters, bodies and answers (``core.apidoc``).

Why a table beside ``app.py``: each view attaches its entry with ``attach``, the web
edge refuses what an entry does not name, and ``/openapi.json`` is built from the same
entries, so the document and the checks are one declaration. Schemas name components
(``ref``) whose bounds come from the running config (``components``). Pure.
"""

from __future__ import annotations

from assay.core.apidoc import (
    OCTETS,
    Api,
    Body,
    Header,
    Param,
    Reply,
    Schema,
    nullable,
    obj,
    ok,
    ref,
    text,
)
from assay.registry import bodies

DIGEST_PATTERN = "^(sha256:)?[0-9a-f]{64}$"
CANONICAL_DIGEST = "^sha256:[0-9a-f]{64}$"
NAME_SEGMENT = "[A-Za-z0-9][A-Za-z0-9._+-]*"
NAME_PATTERN = f"^{NAME_SEGMENT}(/{NAME_SEGMENT})*$"
META_KEY = "[a-z0-9][a-z0-9_.-]{0,63}"
#: ``key=value``: the value one line of text (``META_FORMAT`` names the whole rule).
META_PATTERN = f"^{META_KEY}=[^\\x00-\\x1f\\x7f-\\x9f\\u2028\\u2029]{{0,1024}}$"
META_FORMAT = "assay-meta"
STATES = ["quarantined", "trusted", "revoked", "deleted"]
STR = {"type": "string"}
INT = {"type": "integer", "minimum": 0}
TIME = {"type": "string", "minLength": 1}

#: Path parameters by name, for every route that has them.
PATH_PARAMS: dict[str, Schema] = {"digest": ref("DigestParam"), "name": ref("Name")}


def components(*, max_name_chars: int, max_metadata_entries: int) -> dict[str, Schema]:
    """The schemas the declarations refer to, with this daemon's configured bounds."""
    artifact = obj(
        [
            "digest",
            "name",
            "size",
            "format",
            "format_details",
            "metadata",
            "state",
            "integrity",
            "created_at",
            "updated_at",
            "state_changed_at",
            "uploaded_by",
            "last_verified_at",
            "approvals",
        ],
        digest={"type": "string", "pattern": CANONICAL_DIGEST},
        name=ref("Name"),
        size=INT,
        format={"enum": ["safetensors", "gguf"]},
        format_details={"type": "object"},
        metadata={
            "type": "object",
            "additionalProperties": STR,
            "maxProperties": max_metadata_entries,
        },
        state={"enum": STATES},
        integrity={"enum": ["ok", "failed"]},
        created_at=TIME,
        updated_at=TIME,
        state_changed_at=TIME,
        uploaded_by=STR,
        last_verified_at=nullable(TIME),
        approvals={"type": "array", "items": STR},
    )
    return {
        "Digest": {"type": "string", "pattern": CANONICAL_DIGEST},
        "DigestParam": {
            "type": "string",
            "pattern": DIGEST_PATTERN,
            "description": "sha256:<64 hex> or the bare 64 lower-case hex",
        },
        "Name": {
            "type": "string",
            "pattern": NAME_PATTERN,
            "minLength": 1,
            "maxLength": max_name_chars,
            "description": "/-separated segments of [A-Za-z0-9._+-], each starting "
            "with a letter or digit",
        },
        "Artifact": artifact,
        "Receipt": {"type": "string", "description": "Signed receipt of the request's record"},
    }


RECEIPT = Header({"type": "string"}, "Signed receipt of the audit record (Assay-Receipt).")
ARTIFACT_ANSWER = obj(["artifact"], artifact=ref("Artifact"), receipt=ref("Receipt"))
HISTORY = obj(
    ["ts", "action", "from_state", "to_state", "principal", "reasons", "audit_seq"],
    ts=TIME,
    action=STR,
    from_state=nullable(STR),
    to_state=nullable(STR),
    principal=nullable(STR),
    reasons={"type": "array", "items": STR},
    audit_seq=nullable(INT),
)
SWEEP = obj(
    ["started", "finished", "checked", "failed"],
    started=TIME,
    finished=TIME,
    checked=INT,
    failed={"type": "array", "items": ref("Digest")},
    errors={"type": "array", "items": obj(["digest", "code"], digest=STR, code=STR)},
    receipt=ref("Receipt"),
)

STATUS = Api(
    {
        200: ok(
            obj(
                ["version", "uptime_seconds", "counts", "policy", "tokens", "ready"],
                version=STR,
                uptime_seconds={"type": "number"},
                counts={"type": "object", "additionalProperties": INT},
                policy=STR,
                last_sweep=nullable({"type": "object"}),
                replay=nullable({"type": "object"}),
                replay_mark={},
                tokens=INT,
                ready={"type": "object"},
            )
        )
    }
)
OPENAPI = Api({200: ok({"type": "object", "required": ["openapi", "paths"]})})
LIST = Api(
    {
        200: ok(
            obj(
                ["artifacts", "count", "next_cursor"],
                artifacts={"type": "array", "items": ref("Artifact")},
                count=INT,
                next_cursor=nullable(ref("Digest")),
            )
        )
    },
    query=(
        Param("state", {"enum": STATES}, "Only artifacts in this state."),
        Param("name", STR, "Only artifacts with exactly this name."),
        Param(
            "limit", {"type": "integer", "minimum": 1, "maximum": 1000}, "Page size (default 100)."
        ),
        Param(
            "cursor",
            ref("Digest"),
            "next_cursor of the previous page (400 if this registry did not issue it).",
        ),
        Param(
            "digest_prefix",
            {"type": "string", "pattern": "^(sha256:)?[0-9a-f]{4,64}$"},
            "Only artifacts whose digest starts with these hex digits (at least 4): how "
            "the CLI resolves a short digest.",
        ),
    ),
)
UPLOAD = Api(
    {
        201: ok(
            obj(
                ["artifact", "created"],
                artifact=ref("Artifact"),
                created={"const": True},
                receipt=ref("Receipt"),
            ),
            "Registered: quarantined",
            headers={"Assay-Receipt": RECEIPT},
        ),
        200: ok(
            obj(
                ["artifact", "created"],
                artifact=ref("Artifact"),
                created={"const": False},
                receipt=ref("Receipt"),
            ),
            "These bytes were already registered",
            headers={"Assay-Receipt": RECEIPT},
        ),
    },
    query=(
        Param("name", ref("Name"), "The artifact's name.", required=True),
        Param(
            "meta",
            {"type": "string", "pattern": META_PATTERN, "format": META_FORMAT},
            "key=value metadata (the value one line of text); each key at most once.",
            repeated=True,
        ),
        Param("digest", ref("DigestParam"), "The digest the bytes must have."),
    ),
    body=Body(
        {"type": "string", "format": "binary"},
        OCTETS,
        required=True,
        description="The file: safetensors or GGUF, judged by its content. An "
        "Assay-Digest header may declare the digest instead of ?digest= (both: they "
        "must agree).",
    ),
    problems=(409, 422, 507),
)
SHOW = Api(
    {
        200: ok(
            obj(
                ["artifact", "history"],
                artifact=ref("Artifact"),
                history={"type": "array", "items": HISTORY},
            )
        )
    }
)
SIGNATURE = obj(
    ["key_id", "signature"],
    closed=True,
    key_id={"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
    signature={
        "type": "string",
        "pattern": "^[A-Za-z0-9+/]+={0,2}$",
        "maxLength": bodies.MAX_SIGNATURE_CHARS,
    },
)
PROMOTED = obj(
    ["artifact", "promoted", "decision"],
    artifact=ref("Artifact"),
    promoted={"type": "boolean"},
    receipt=ref("Receipt"),
    decision=obj(
        ["failed", "passed"],
        failed={"type": "array", "items": STR},
        passed={"type": "array", "items": STR},
    ),
)
PROMOTE = Api(
    {
        200: ok(PROMOTED, "Promoted: trusted", headers={"Assay-Receipt": RECEIPT}),
        202: ok(
            PROMOTED,
            "Approval recorded; the policy waits for more",
            headers={"Assay-Receipt": RECEIPT},
        ),
    },
    body=Body(
        obj(
            closed=True,
            signatures={
                "type": "array",
                "items": SIGNATURE,
                "uniqueItems": True,
                "maxItems": bodies.MAX_SIGNATURES,
            },
        )
    ),
    problems=(409, 422),
)


def _reason(required: bool) -> Body:
    reason = text(bodies.MAX_REASON_CHARS)
    if required:
        reason = {**reason, "pattern": "\\S"}
        return Body(obj(["reason"], closed=True, reason=reason), required=True)
    return Body(obj(closed=True, reason=reason))


CHANGED = ok(ARTIFACT_ANSWER, headers={"Assay-Receipt": RECEIPT})
REVOKE = Api({200: CHANGED}, body=_reason(True), problems=(409,))
DELETE = Api({200: CHANGED}, body=_reason(False), problems=(409,))
VERIFY = Api(
    {
        200: ok(
            obj(
                ["digest", "ok"],
                digest=ref("Digest"),
                ok={"type": "boolean"},
                actual=STR,
                skipped=STR,
                receipt=ref("Receipt"),
            ),
            headers={"Assay-Receipt": RECEIPT},
        )
    },
    problems=(409,),
)
SWEEP_API = Api({200: ok(SWEEP, headers={"Assay-Receipt": RECEIPT})})
CONTENT = Api(
    {
        200: Reply(
            "The trusted bytes; the stream aborts before its last chunk if they do "
            "not hash to the digest.",
            {"type": "string", "format": "binary"},
            OCTETS,
            {
                "Digest": Header(ref("Digest"), "The bytes' digest.", required=True),
                "Content-Length": Header({"type": "string", "pattern": "^[0-9]+$"}, required=True),
            },
        )
    },
    problems=(409,),
)
TRUSTED = Api(
    {
        200: ok(
            obj(
                ["name", "digest", "size", "format"],
                name=ref("Name"),
                digest=ref("Digest"),
                size=INT,
                format=STR,
            )
        )
    }
)
