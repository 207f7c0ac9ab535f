"""API keys: raw keys for clients, fingerprints for the secret store, commitments for config.

Why three parts: the raw key is shown once and kept only by the client; the relay stores
its ``sha256:`` fingerprint in a secret store or environment variable; the config (which is
reviewed and versioned) holds a commitment binding the key id to that fingerprint. At
startup a missing fingerprint, or one that does not match its commitment (a swapped or
stale secret), stops the relay: it fails closed. Verification reuses the core's
constant-time walk over every fingerprint. Pure.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable

from assay.core.errors import ConfigError
from assay.core.tokens import Principal, TokenRecord, authenticate, fingerprint

KEY_PREFIX = "assayrk_"
KEY_BYTES = 32
FINGERPRINT = re.compile(r"sha256:[0-9a-f]{64}")
_DOMAIN = b"assay.relay.api-key-commitment.v1\x00"


def generate_key() -> str:
    raw = secrets.token_bytes(KEY_BYTES)
    return KEY_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def commitment(key_id: str, fp: str) -> str:
    """``commit:sha256:<hex>`` binding ``key_id`` to fingerprint ``fp``."""
    digest = hashlib.sha256(_DOMAIN + key_id.encode() + b"\x00" + fp.encode()).hexdigest()
    return f"commit:sha256:{digest}"


def new_key(key_id: str) -> dict[str, str]:
    """Everything ``relay generate-api-key`` prints: key, fingerprint, commitment."""
    raw = generate_key()
    fp = fingerprint(raw)
    return {"id": key_id, "key": raw, "fingerprint": fp, "commitment": commitment(key_id, fp)}


def check(key_id: str, fp: str, expected: str, *, where: str) -> TokenRecord:
    """Refuse a malformed fingerprint or one that does not match its commitment."""
    if not FINGERPRINT.fullmatch(fp):
        raise ConfigError(
            f"{where}.fingerprint: not a sha256:<64 hex> fingerprint",
            code="auth.api_key_fingerprint_invalid",
            path=f"{where}.fingerprint",
        )
    if not hmac.compare_digest(commitment(key_id, fp).encode(), expected.encode()):
        raise ConfigError(
            f"{where}.commitment: does not match the fingerprint for key {key_id!r}; "
            "the secret was swapped or the commitment is stale",
            code="auth.api_key_commitment_mismatch",
            path=f"{where}.commitment",
        )
    return TokenRecord(id=key_id, fingerprint=fp, scopes=frozenset())


def verifier(records: Iterable[TokenRecord]) -> Callable[[str], Principal]:
    """The ``Authenticator`` extra scheme: raw key to principal, constant time."""
    frozen = tuple(records)

    def verify(presented: str) -> Principal:
        return authenticate(presented, frozen, auth_mode="api_key")

    return verify
