"""Keyed hashes for sensitive values in the audit log.

Why keyed: a plain hash of a national id is reversed by hashing every possible id. An HMAC
under the deployment's audit key, domain-separated per field, lets an auditor holding the
key test "was this person looked up?" while the log alone reveals nothing.

This stands in for ``assay.core.audit.chain.redact`` until the audit core provides it; the
output format (``hmac-sha256:<hex>``) is meant to match. Pure.
"""

from __future__ import annotations

import hashlib
import hmac

_DOMAIN = b"assay.audit.redact.v1\x00"


def redact(key: bytes, field: str, value: str) -> str:
    """``hmac-sha256:<hex>`` of ``value``, separated by ``field`` so equal values differ."""
    msg = _DOMAIN + field.encode() + b"\x00" + value.encode()
    return "hmac-sha256:" + hmac.new(key, msg, hashlib.sha256).hexdigest()
