"""RFC 9457 problem details: the one translation of typed errors into HTTP bodies.

Pure. Both the Quart error handler and the raw ASGI upload adapter call ``render``.
"""

from __future__ import annotations

import json
from typing import Any

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


def from_error(err: AssayError, *, instance: str, request_id: str) -> tuple[int, dict[str, Any]]:
    body = err.problem()
    body["instance"] = instance
    body["request_id"] = request_id
    return err.status, body


def from_status(
    status: int, detail: str, *, instance: str, request_id: str
) -> tuple[int, dict[str, Any]]:
    code, title = HTTP_CODES.get(status, ("request.invalid", "HTTP error"))
    return status, {
        "type": f"urn:assay:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
        "instance": instance,
        "request_id": request_id,
    }


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
