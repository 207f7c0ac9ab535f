"""Opaque page cursors, HMAC-bound to the dataset, entity, query, snapshot and principal.

Why bound: a cursor is server state handed to a client. Binding it to the normalized query
and the snapshot digest means a cursor from another query, another entity or an older
snapshot is refused (``entity.cursor_invalid``) instead of silently paging a different
result, and a forged offset cannot be minted without the key. Binding it to the
principal (auth mode and id, never the secret) means a cursor that leaks, or is handed
on, is worth nothing to another credential: it cannot continue someone else's paging.
Pure.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from assay.core.errors import BadRequest
from assay.relay.planner import canonical_json

VERSION = b"\x01"
_DOMAIN = b"assay.relay.cursor.v1\x00"
_MAC_BYTES = 16


def derive_key(master: bytes, purpose: str) -> bytes:
    """A purpose-specific key from the deployment's HMAC key (domain-separated)."""
    return hmac.new(master, b"assay.relay.key\x00" + purpose.encode(), hashlib.sha256).digest()


def binding(
    dataset: str, entity: str, query: dict[str, Any], snapshot: str, principal: str
) -> bytes:
    """What a cursor is bound to; the cursor itself is excluded from ``query``."""
    doc = {
        "dataset": dataset,
        "entity": entity,
        "query": query,
        "snapshot": snapshot,
        "principal": principal,
    }
    return hashlib.sha256(canonical_json(doc)).digest()


def _mac(key: bytes, bound: bytes, payload: bytes) -> bytes:
    return hmac.new(key, _DOMAIN + bound + payload, hashlib.sha256).digest()[:_MAC_BYTES]


def encode(key: bytes, bound: bytes, offset: int) -> str:
    payload = VERSION + offset.to_bytes(8, "big")
    raw = payload + _mac(key, bound, payload)
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(key: bytes, bound: bytes, token: str) -> int:
    """The offset inside ``token``, or ``entity.cursor_invalid``."""
    invalid = BadRequest(
        "cursor is not valid for this query or snapshot; start again without it",
        code="entity.cursor_invalid",
        reasons=["cursor invalid"],
    )
    # 1. Shape: 34 base64url characters (25 bytes: version, offset, MAC).
    if len(token) != 34 or not token.isascii():
        raise invalid
    try:
        raw = base64.urlsafe_b64decode(token + "==")
    except ValueError:
        raise invalid from None
    # 2. Canonical: the last character carries 2 bits of data and 4 the decoder ignores,
    #    so 16 spellings decode alike. Only the one this module writes is accepted: a
    #    changed character is a tampered cursor, whatever bits it touched.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != token:
        raise invalid
    # 3. Version and MAC (constant time), over the binding.
    payload, mac = raw[:9], raw[9:]
    if payload[:1] != VERSION or not hmac.compare_digest(mac, _mac(key, bound, payload)):
        raise invalid
    return int.from_bytes(payload[1:], "big")
