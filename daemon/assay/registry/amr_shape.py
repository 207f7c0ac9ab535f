"""AMR (SecAI ai-model-registry) compatibility, as data: names, bodies and answer shapes.

Why a pure module: the compatibility routes (``amr.py``) must answer exactly as AMR's
published schema says while deciding nothing about trust themselves; every decision here
is over values (artifacts, query arguments, request bodies, audit records), so it can be
tested against the schema without a daemon. ``docs/amr-compat.md`` is the mapping.

AMR names one artifact per ``name``; assay keeps every digest uploaded under a name. A
name therefore means its *current* artifact (``current``): the most recently promoted
trusted one, preferring intact bytes, else the last one registered, which is also how
``GET /v1/trusted/{name}`` resolves. Revoke and delete act on every artifact of the name
they can still move (``revocable``, ``deletable``), so a revoked name can never fall back
to an older trusted version.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from assay.core.errors import BadRequest
from assay.registry.errors import FormatNotAllowed
from assay.registry.model import Artifact
from assay.registry.validate import unsafe_char

#: The storage contract AMR's ``/v1/model/path`` promises: bytes at a path named by
#: their digest, never replaced in place. assay's store is ``objects/sha256/<hex>``.
STORAGE_CONTRACT = "content-addressed-v1"

#: Every AMR path served (``amr.py`` registers exactly these); problems on them are
#: shaped by ``problem_shape``.
PATHS: frozenset[str] = frozenset(
    {
        "/health",
        "/v1/models",
        "/v1/model",
        "/v1/model/path",
        "/v1/model/verify",
        "/v1/models/verify-all",
        "/v1/integrity/status",
        "/v1/model/verify-manifest",
        "/v1/model/acquire",
        "/v1/model/quarantine",
        "/v1/model/promote",
        "/v1/model/revoke",
        "/v1/model/delete",
        "/v1/stats",
        "/v1/audit",
    }
)

FORMATS = frozenset({"gguf", "safetensors"})
MAX_NAME = 256
MAX_FILENAME = 4096
MAX_SOURCE = 4096
MAX_VERSION = 256
MAX_EVIDENCE = 64
MAX_EVIDENCE_KEY = 256
MAX_EVIDENCE_VALUE = 1024
#: A page of ``/v1/models`` or ``/v1/audit``: AMR returns everything at once; assay
#: bounds every answer (``limit``, at most this, default this) and says where to go on.
PAGE_MAX = 1000

_HEX = re.compile(r"[a-f0-9]{64}")
_DIGITS = re.compile(r"[0-9]{1,19}")


def problem_shape(path: str, status: int, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """AMR's answer for a problem on an AMR path (``core.web``'s ``problem_shape``).

    1. AMR refuses a missing or wrong token with 403 (``requireServiceToken``), where
       assay answers 401: the status changes, the stable ``code`` stays.
    2. AMR's JSON errors carry ``error``: the detail is copied there, so an AMR client
       prints something useful; the RFC 9457 members stay for everyone else.
    """
    if path not in PATHS:
        return status, body
    if status == 401:
        status = 403
    shaped = dict(body)
    shaped["status"] = status
    shaped.setdefault("error", str(body.get("detail") or body.get("title") or ""))
    return status, shaped


def problem_statuses(path: str, statuses: set[int]) -> set[int]:
    """The problem statuses an AMR path can give, as ``problem_shape`` reshapes them."""
    return {403 if s == 401 else s for s in statuses} if path in PATHS else statuses


# -- query arguments -------------------------------------------------------------------


def name_arg(args: Mapping[str, Sequence[str]]) -> str:
    """``?name=``: exactly once, as AMR validates it (``validArtifactName``).

    Any name AMR accepts is looked up (one that assay's own rules refuse simply matches
    nothing: 404); only what AMR refuses, or a repeated or unknown parameter, is a 400.
    """
    unknown = sorted(set(args) - {"name"})
    if unknown:
        raise BadRequest(f"unknown query parameters: {', '.join(unknown)[:200]}")
    values = list(args.get("name", ()))
    if len(values) != 1:
        raise BadRequest("exactly one ?name= parameter is required", code="request.bad_name")
    name = values[0]
    if not name or len(name) > MAX_NAME or name.strip() != name or unsafe_char(name):
        raise BadRequest(f"invalid ?name= (1-{MAX_NAME} characters, no controls or "
                         "surrounding spaces)", code="request.bad_name")  # fmt: skip
    return name


def page_args(args: Mapping[str, Sequence[str]], cursor: str) -> tuple[int, str | None]:
    """``?limit=`` (1..``PAGE_MAX``, default ``PAGE_MAX``) and the cursor parameter."""
    unknown = sorted(set(args) - {"limit", cursor})
    if unknown:
        raise BadRequest(f"unknown query parameters: {', '.join(unknown)[:200]}")
    if any(len(v) != 1 for v in args.values()):
        raise BadRequest("each query parameter may be given once")
    limit = PAGE_MAX
    if "limit" in args:
        raw = args["limit"][0]
        if _DIGITS.fullmatch(raw) is None or not 1 <= int(raw) <= PAGE_MAX:
            raise BadRequest(f"limit must be an integer from 1 to {PAGE_MAX}",
                             code="request.bad_limit")  # fmt: skip
        limit = int(raw)
    after = args[cursor][0] if cursor in args else None
    return limit, after


def seq_cursor(raw: str | None) -> int:
    """``/v1/audit``'s ``?after=``: the last sequence number already seen (0: none)."""
    if raw is None:
        return 0
    if _DIGITS.fullmatch(raw) is None:
        raise BadRequest("after must be a sequence number", code="request.bad_cursor")
    return int(raw)


# -- which artifact a name means --------------------------------------------------------


def current(arts: Sequence[Artifact]) -> Artifact | None:
    """The artifact a name means (``arts``: the name's artifacts in registration order)."""
    trusted = [a for a in arts if a.state == "trusted"]
    if trusted:
        pool = [a for a in trusted if a.integrity == "ok"] or trusted
        return max(pool, key=lambda a: (a.state_changed_at, a.digest))
    return arts[-1] if arts else None


def revocable(arts: Iterable[Artifact]) -> list[Artifact]:
    """What ``revoke name`` moves: every artifact of the name not yet revoked or deleted."""
    return [a for a in arts if a.state in {"quarantined", "trusted"}]


def deletable(arts: Iterable[Artifact]) -> list[Artifact]:
    """What ``delete name`` moves: every artifact of the name not yet deleted."""
    return [a for a in arts if a.state != "deleted"]


# -- answers ------------------------------------------------------------------------------


def bare_hex(digest: str) -> str:
    """``sha256:<hex>`` -> ``<hex>``: AMR's ``sha256`` is bare lower-case hex."""
    return digest.removeprefix("sha256:")


def filename_of(art: Artifact) -> str:
    """AMR's ``filename`` (its quarantine input name); assay keeps none, so the name's
    last segment with the format's extension, which AMR's format rule agrees with."""
    leaf = art.name.rsplit("/", 1)[-1]
    return leaf if leaf.endswith("." + art.format) else f"{leaf}.{art.format}"


def artifact(
    art: Artifact, *, state: str | None = None, promoted_at: str | None = None,
    integrity: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """AMR's ``Artifact``. ``object_path`` is left out: AMR's pattern is its own layout
    (``objects/sha256/ab/<hex>.gguf``), not assay's; ``/v1/model/path`` gives the path.
    ``integrity`` (an extension member) says whether the bytes last hashed right."""
    state = state or art.state
    out: dict[str, Any] = {
        "name": art.name,
        "format": art.format,
        "filename": filename_of(art),
        "sha256": bare_hex(art.digest),
        "size_bytes": art.size,
        "state": state,
    }
    source = art.metadata.get("source")
    if source:
        out["source"] = source[:MAX_SOURCE]
    if promoted_at is None and state == "trusted" and art.state == "trusted":
        promoted_at = art.state_changed_at
    if promoted_at is not None:
        out["promoted_at"] = promoted_at
    if integrity:
        out["integrity"] = art.integrity
    return out


def stats(arts: Iterable[Artifact]) -> dict[str, Any]:
    """``/v1/stats``: every assay state is counted (there is no ``acquired``)."""
    counts = {s: 0 for s in ("quarantined", "trusted", "revoked", "deleted")}
    for a in arts:
        counts[a.state] = counts.get(a.state, 0) + 1
    return {
        "model_count": sum(counts.values()),
        "trusted_count": counts["trusted"],
        "state_counts": counts,
    }


def integrity_status(
    arts: Iterable[Artifact], last_sweep: Mapping[str, Any] | None
) -> dict[str, Any]:
    """``/v1/integrity/status``: ``failed`` while any kept artifact's bytes failed their
    last check, else ``ok`` once a sweep ran since startup, else ``unknown``."""
    failed = sum(1 for a in arts if a.state != "deleted" and a.integrity != "ok")
    sweep = None
    if last_sweep is not None:
        sweep = {
            "started": last_sweep.get("started"),
            "finished": last_sweep.get("finished"),
            "checked": last_sweep.get("checked"),
            "failed": len(last_sweep.get("failed", ())),
        }
    if failed:
        status, detail = "failed", f"{failed} stored artifact(s) failed their last check"
    elif sweep is None:
        status, detail = "unknown", "no integrity sweep has run since the daemon started"
    else:
        status, detail = "ok", "every stored artifact hashed to its digest when last checked"
    return {"status": status, "detail": detail, "integrity_failed": failed, "last_sweep": sweep}


# -- request bodies ---------------------------------------------------------------------

ACQUIRE_FIELDS = frozenset({"name", "filename", "sha256", "size_bytes", "source"})
PROMOTE_FIELDS = frozenset(
    {
        "name", "filename", "sha256", "size_bytes", "source", "scan_results",
        "scanner_versions", "policy_version", "source_revision", "gguf_guard_fingerprint",
        "gguf_guard_manifest",
    }
)  # fmt: skip


def _text(body: Mapping[str, Any], key: str, limit: int, *, required: bool) -> str | None:
    value = body.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not (1 if required else 0) <= len(value) <= limit:
        raise BadRequest(f"{key} must be a string of {1 if required else 0}-{limit} characters")
    if "\x00" in value or "\r" in value or "\n" in value:
        raise BadRequest(f"{key} has a NUL or line break")
    return value


def _size(body: Mapping[str, Any], *, required: bool) -> int | None:
    value = body.get("size_bytes")
    if value is None and not required:
        return None
    # An integral number is an integer whatever its spelling (``69888.0``), as JSON
    # Schema says; a fraction, a bool or a negative is not. Only below 2**53, where a
    # float still tells an integer from a fraction (``9007199254740993.5`` is not one).
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest("size_bytes must be a non-negative integer")
    return value


def format_of_filename(filename: str) -> str:
    """AMR's rule: the format is the lower-cased extension; the path must stay local.

    The filename is never used for I/O here: assay takes bytes, not paths. It is checked
    as AMR checks it (``registryRel``) so the same requests are refused with 400.
    """
    parts = filename.split("/")
    if "\\" in filename or filename.startswith("/") or ".." in parts or filename in {".", ""}:
        raise BadRequest("filename must be a relative path inside the registry")
    leaf = parts[-1]
    return leaf.rsplit(".", 1)[-1].lower() if "." in leaf else ""


def identity(body: Mapping[str, Any], *, size_required: bool) -> tuple[str, str, str, int | None]:
    """``(name, format, digest, size_bytes)`` of an acquire or promote body; malformed
    fields are refused with 400 (the format is checked by ``require_format``)."""
    name = _text(body, "name", MAX_NAME, required=True)
    filename = _text(body, "filename", MAX_FILENAME, required=True)
    raw = body.get("sha256")
    if not isinstance(raw, str) or _HEX.fullmatch(raw) is None:
        raise BadRequest("sha256 must be 64 lower-case hex characters", code="request.bad_digest")
    size = _size(body, required=size_required)
    _text(body, "source", MAX_SOURCE, required=False)
    assert name is not None and filename is not None
    return name, format_of_filename(filename), "sha256:" + raw, size


def require_format(fmt: str) -> None:
    """A filename of another format is refused with 403, as AMR does."""
    if fmt not in FORMATS:
        raise FormatNotAllowed(f"format {fmt[:40]!r} not allowed; permitted: gguf, safetensors")


def mismatch(art: Artifact, name: str, fmt: str, size: int | None) -> list[str]:
    """How the upload with a request's digest differs from what the request says."""
    out = []
    if art.name != name:
        out.append(f"the upload with these bytes is named {art.name!r}, not {name!r}")
    if art.format != fmt:
        out.append(f"its content is {art.format}, not {fmt}")
    if size and size != art.size:
        out.append(f"it is {art.size} bytes, not {size}")
    return out


def evidence(body: Mapping[str, Any]) -> list[str]:
    """Check a promote's scanner evidence; the failed entries (each a reason), if any.

    assay's own policy decides a promotion; evidence sent with it is bounded like AMR
    bounds it (400 otherwise) and may only refuse: any result that is not ``pass``, or a
    result without its scanner's version, refuses (422), as AMR's production rule does.
    """
    results = _evidence_map(body, "scan_results")
    versions = _evidence_map(body, "scanner_versions")
    for key in ("policy_version", "source_revision"):
        _text(body, key, MAX_VERSION, required=False)
    _text(body, "gguf_guard_manifest", MAX_FILENAME, required=False)
    fingerprint = body.get("gguf_guard_fingerprint")
    if fingerprint is not None and not isinstance(fingerprint, dict):
        raise BadRequest("gguf_guard_fingerprint must be an object")
    failed = [f"scanner {k!r}: {v[:80]!r}" for k, v in sorted(results.items()) if v != "pass"]
    failed += [f"scanner {k!r}: no version" for k in sorted(results) if not versions.get(k)]
    return failed


def _evidence_map(body: Mapping[str, Any], key: str) -> dict[str, str]:
    value = body.get(key, {})
    if not isinstance(value, dict) or len(value) > MAX_EVIDENCE:
        raise BadRequest(f"{key} must be an object of at most {MAX_EVIDENCE} strings")
    for k, v in value.items():
        if not isinstance(v, str) or not 0 < len(k) <= MAX_EVIDENCE_KEY:
            raise BadRequest(f"{key} must map names of 1-{MAX_EVIDENCE_KEY} characters to strings")
        if len(v) > MAX_EVIDENCE_VALUE or any(c in k + v for c in "\x00\r\n"):
            raise BadRequest(f"{key} values are one line of at most {MAX_EVIDENCE_VALUE}")
    return dict(value)


# -- the audit view ---------------------------------------------------------------------

#: assay's lifecycle records and AMR's action for each. An upload registers the bytes
#: and quarantines them at once: AMR's ``acquire`` and ``quarantine`` in one record.
LIFECYCLE: Mapping[str, str] = {
    "artifact.ingest": "quarantine",
    "artifact.promote": "promote",
    "artifact.revoke": "revoke",
    "artifact.delete": "delete",
}


def is_lifecycle(rec: Mapping[str, Any]) -> bool:
    """A record that moved an artifact's state (approvals, integrity checks, reads and
    duplicate uploads did not); whether its change was applied is the database's say."""
    return (
        rec.get("action") in LIFECYCLE
        and rec.get("decision") == "allow"
        and isinstance(rec.get("seq"), int)
        and isinstance(rec.get("target"), str)
        and rec.get("to_state") is not None
        and rec.get("from_state") != rec.get("to_state")
    )


def audit_event(rec: Mapping[str, Any], art: Artifact) -> dict[str, Any]:
    """AMR's ``AuditEvent`` for one of assay's lifecycle records.

    ``sequence``, ``prev_hash`` and ``hash`` are the record's own place in assay's
    HMAC chain (``seq``, ``prev_hash``, ``record_hash``), so every event can be checked
    with ``assay audit verify`` and proven with ``assay audit prove``. Only what the
    schema allows is shown: no principal, request id, reasons or parameters.
    """
    to_state = str(rec["to_state"])
    action = LIFECYCLE[str(rec["action"])]
    promoted_at = str(rec["ts"]) if action == "promote" else None
    event: dict[str, Any] = {
        "sequence": rec["seq"],
        "timestamp": rec["ts"],
        "action": action,
        "name": art.name,
        "to_state": to_state,
        "sha256": bare_hex(art.digest),
        "artifact": artifact(art, state=to_state, promoted_at=promoted_at, integrity=False),
        "prev_hash": rec["prev_hash"],
        "hash": rec["record_hash"],
    }
    if rec.get("from_state"):
        event["from_state"] = rec["from_state"]
    return event
