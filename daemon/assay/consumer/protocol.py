"""The consumer socket's wire format, shared by the daemon and ``open_trusted``. Pure.

One connection carries one exchange over ``SOCK_SEQPACKET`` (message boundaries, so the
header and its fd arrive together, or not at all):

1. the consumer sends one message, a JSON object of at most ``MAX_REQUEST_BYTES``:
   ``{"v": 1, "name": "demo/tiny"}`` or ``{"v": 1, "digest": "sha256:..."}``, optionally
   with ``"token": "assay_..."`` (a bearer token; without one the daemon knows the peer
   by its credentials);
2. the daemon answers with one message of at most ``MAX_ANSWER_BYTES``: either
   ``{"ok": true, "digest", "size", "name", "format", "verified_at"}`` with exactly one
   read-only fd attached (``SCM_RIGHTS``), or an RFC 9457 problem object with the
   registry's stable ``code`` (``artifact.not_found``, ``artifact.not_trusted``,
   ``artifact.integrity_failed``, ``auth.scope_denied``...) and no fd;
3. the daemon closes the connection.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from assay.core import problem
from assay.core.errors import AssayError, BadRequest, IntegrityError
from assay.registry import errors as _registry_errors  # noqa: F401 - registers artifact.* codes

VERSION = 1
MAX_REQUEST_BYTES = 4096
MAX_ANSWER_BYTES = 16 * 1024
#: Where the packaged socket unit listens; ``$ASSAY_CONSUMER_SOCKET`` overrides it.
DEFAULT_SOCKET = "/run/assay-consumer.sock"
SOCKET_ENV = "ASSAY_CONSUMER_SOCKET"
#: More uids (comma-separated) whose socket a consumer trusts, besides root and its own.
SERVER_UIDS_ENV = "ASSAY_CONSUMER_SERVER_UIDS"
#: What a successful answer carries, besides ``ok``.
HEADER_FIELDS = ("digest", "size", "name", "format", "verified_at")


class BadAnswer(IntegrityError):
    """The daemon's answer, or the fd it sent, is not what the protocol promises."""

    code = "consumer.bad_answer"
    title = "Unusable answer from the consumer socket"


@dataclass(frozen=True)
class Header:
    """What the daemon says about the fd it handed out."""

    digest: str
    size: int
    name: str
    format: str
    verified_at: str

    def to_json(self) -> dict[str, Any]:
        return {"ok": True, **{k: getattr(self, k) for k in HEADER_FIELDS}}


def encode_request(target: str, token: str | None = None) -> bytes:
    """The request for a trusted name or a digest (``sha256:`` + 64 hex)."""
    key = "digest" if target.startswith("sha256:") else "name"
    body: dict[str, Any] = {"v": VERSION, key: target}
    if token:
        body["token"] = token
    raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    if len(raw) > MAX_REQUEST_BYTES:
        raise BadRequest(f"request larger than {MAX_REQUEST_BYTES} bytes", code="request.too_large")
    return raw


def encode_answer(body: Mapping[str, Any]) -> bytes:
    """An answer, bounded: a problem too long to send is cut to its stable parts."""
    raw = json.dumps(dict(body), sort_keys=True, separators=(",", ":")).encode()
    if len(raw) <= MAX_ANSWER_BYTES:
        return raw
    keep = {k: body[k] for k in ("type", "title", "status", "code") if k in body}
    keep["detail"] = str(body.get("detail", ""))[:1000]
    return json.dumps(keep, sort_keys=True, separators=(",", ":")).encode()


def decode_answer(raw: bytes) -> Header:
    """The header of a successful answer, or the typed error a problem answer names.

    Step ANS-1: one JSON object within the bound. Step ANS-2: a problem is raised as
    the daemon's own error class (by its stable code). Step ANS-3: an ``ok`` answer has
    every header field with its type.
    """
    if len(raw) > MAX_ANSWER_BYTES:
        raise BadAnswer(f"answer larger than {MAX_ANSWER_BYTES} bytes")
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadAnswer("answer is not a JSON object") from None
    if not isinstance(body, dict):
        raise BadAnswer("answer is not a JSON object")
    if body.get("ok") is not True:
        if "code" not in body:
            raise BadAnswer("answer is neither a header nor a problem")
        status = body.get("status")
        err: AssayError = problem.to_error(status if isinstance(status, int) else 500, body)
        raise err
    fields = {k: body.get(k) for k in HEADER_FIELDS}
    size = fields["size"]
    if type(size) is not int or size < 0:
        raise BadAnswer("answer's size is not a non-negative integer")
    for key in ("digest", "name", "format", "verified_at"):
        if not isinstance(fields[key], str):
            raise BadAnswer(f"answer's {key} is not a string")
    return Header(
        digest=str(fields["digest"]),
        size=size,
        name=str(fields["name"]),
        format=str(fields["format"]),
        verified_at=str(fields["verified_at"]),
    )
