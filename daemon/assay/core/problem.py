"""RFC 9457 problem details: the one translation of typed errors into HTTP bodies.

Pure. The Quart error handler, the raw ASGI upload adapter and the consumer gate all
build their problems here (``from_error``, ``from_status``).

Why the bounds: a problem names the request (``instance``, the path as sent) and says
what was wrong (``detail``, ``reasons``), and both may quote the caller; a 60 KB path
came back whole in every 400, an amplifier and a reflection of whatever it held. As the
audit record does (``assay.core.audit.bounds``), every such string is cut to a limit and
marked with ``…`` (U+2026) so nobody mistakes it for the whole, and ``reasons`` are
capped in count; ``instance_truncated: true`` says the path was cut. Values are never
refused here: the answer to bad input must always be an answer.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from assay.core import errors
from assay.core.errors import AssayError

PROBLEM_TYPE = "application/problem+json"

#: Framework HTTP statuses that arrive without one of our typed errors.
HTTP_CODES: dict[int, tuple[str, str]] = {
    400: ("request.invalid", "Bad request"),
    404: ("request.not_found", "Not found"),
    405: ("request.method_not_allowed", "Method not allowed"),
    408: ("request.timeout", "Request timeout"),
    411: ("request.length_required", "Length required"),
    413: ("request.too_large", "Payload too large"),
    415: ("request.unsupported_media_type", "Unsupported media type"),
    431: ("request.headers_too_large", "Request header fields too large"),
    500: ("internal.error", "Internal error"),
    501: ("request.not_implemented", "Not implemented"),
}


#: The longest ``instance`` (a path) an answer reflects, in characters.
MAX_INSTANCE_CHARS = 512
#: The longest ``detail`` and each reason, in characters.
MAX_DETAIL_CHARS = 2048
#: At most this many ``reasons`` (a typed error lists each rule that failed).
MAX_REASONS = 64
MARK = "\u2026"


def _cut(text: str, limit: int) -> str:
    """``text`` if it fits, else its first ``limit - 1`` characters and ``…``."""
    return text if len(text) <= limit else text[: limit - 1] + MARK


def _bounded(body: dict[str, Any], instance: str, request_id: str) -> dict[str, Any]:
    """Steps of every problem: 1. ``instance`` cut to ``MAX_INSTANCE_CHARS`` (and
    marked ``instance_truncated``); 2. ``detail`` cut to ``MAX_DETAIL_CHARS``; 3. at most
    ``MAX_REASONS`` reasons, each cut likewise; 4. the request id (bounded at the edge,
    ``assay.core.caller_text``)."""
    body["instance"] = _cut(instance, MAX_INSTANCE_CHARS)
    if len(instance) > MAX_INSTANCE_CHARS:
        body["instance_truncated"] = True
    if isinstance(body.get("detail"), str):
        body["detail"] = _cut(body["detail"], MAX_DETAIL_CHARS)
    reasons = body.get("reasons")
    if isinstance(reasons, list):
        body["reasons"] = [
            _cut(r, MAX_DETAIL_CHARS) if isinstance(r, str) else r for r in reasons[:MAX_REASONS]
        ]
    body["request_id"] = request_id
    return body


def from_error(err: AssayError, *, instance: str, request_id: str) -> tuple[int, dict[str, Any]]:
    return err.status, _bounded(err.problem(), instance, request_id)


def from_status(
    status: int, detail: str, *, instance: str, request_id: str
) -> tuple[int, dict[str, Any]]:
    code, title = HTTP_CODES.get(status, ("request.invalid", "HTTP error"))
    body = {
        "type": f"urn:assay:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    return status, _bounded(body, instance, request_id)


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


#: Headers on every response: nothing cached, nothing sniffed, nothing framed.
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    ("Content-Security-Policy", "default-src 'none'; frame-ancestors 'none'"),
)


#: The family a problem falls back to when its code is one this side does not know.
STATUS_CLASSES: dict[int, type[AssayError]] = {
    400: errors.BadRequest,
    401: errors.InvalidCredential,
    403: errors.ScopeDenied,
    404: errors.NotFound,
    409: errors.Conflict,
    413: errors.PayloadTooLarge,
    422: errors.RejectedInput,
    503: errors.StorageError,
    507: errors.StorageFull,
}

#: Problem members that the error object carries itself; every other one is kept in
#: ``extra`` (``reason``, ``artifact``, ``requested_name``...).
_OWN_MEMBERS = frozenset({"type", "title", "status", "detail", "code", "reasons", "instance"})


def _classes_by_code() -> dict[str, type[AssayError]]:
    """Every error class (of the modules imported so far), by its family's stable code."""
    found: dict[str, type[AssayError]] = {}
    pending: list[type[AssayError]] = [AssayError]
    for _ in range(1000):  # bounded walk of a small class tree
        if not pending:
            break
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        found.setdefault(cls.code, cls)
    return found


def to_error(status: int, body: Mapping[str, Any]) -> AssayError:
    """A problem received from a daemon, as the typed error the daemon raised, with
    every member it sent kept (so ``--json`` prints the daemon's problem, not a guess).

    Step PRB-1: the stable code names the exact family (a 403 may be a scope denial or an
    artifact that is not trusted); the status is the fallback for codes this side
    predates. Import the modules whose codes matter (``assay.registry.errors``...)
    before calling. Step PRB-2: the error is built without its class's own constructor
    (``FormatRefused`` takes a reason): the daemon already decided every member, and this
    side must not re-derive any. Step PRB-3: the daemon's status is kept, not the
    family's hint (a 422 stays 422).
    """
    code = str(body.get("code", "http.error"))
    cls = _classes_by_code().get(code) or STATUS_CLASSES.get(status, AssayError)
    reasons = body.get("reasons")
    extra = {str(k): v for k, v in body.items() if k not in _OWN_MEMBERS}
    err = cls.__new__(cls)
    AssayError.__init__(
        err,
        str(body.get("detail", "")),
        code=code,
        reasons=[str(r) for r in reasons] if isinstance(reasons, list) else None,
        **extra,
    )
    err.status = status  # type: ignore[misc] # the daemon's status, not the family's hint
    if "reason" in extra:
        err.reason = extra["reason"]  # type: ignore[attr-defined]
    return err
