"""Bearer tokens and scopes: pure logic, no I/O.

A raw token is ``assay_`` + 43 base64url characters (32 random bytes). Only its SHA-256
fingerprint is ever stored. Verification walks every stored fingerprint with a
constant-time compare, so timing reveals neither which token matched nor how much of one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field

from assay.core.errors import BadRequest, InvalidCredential, ScopeDenied

TOKEN_PREFIX = "assay_"
TOKEN_BYTES = 32
MAX_PRESENTED_TOKEN_CHARS = 512
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SCOPE_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,31}:[a-z][a-z0-9_-]{0,31}")


@dataclass(frozen=True)
class Principal:
    """Who is asking: an id (never a secret) and the scopes it was granted."""

    id: str
    scopes: frozenset[str]
    auth_mode: str = "token"

    def require(self, scope: str) -> None:
        """Raise ``ScopeDenied`` unless this principal holds ``scope``."""
        if scope not in self.scopes:
            raise ScopeDenied(f"token {self.id!r} lacks scope {scope!r}", required_scope=scope)


@dataclass(frozen=True)
class TokenRecord:
    """One stored credential: id, fingerprint and scopes. Holds no secret."""

    id: str
    fingerprint: str
    scopes: frozenset[str]
    created: str = ""
    revoked: bool = False
    note: str = field(default="", compare=False)


def generate_token() -> str:
    raw = secrets.token_bytes(TOKEN_BYTES)
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def fingerprint(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def check_id(value: str) -> str:
    if not ID_PATTERN.fullmatch(value):
        raise BadRequest(f"invalid id {value!r}: use 1-64 of [A-Za-z0-9._-]")
    return value


def check_scopes(values: Iterable[str]) -> frozenset[str]:
    scopes = frozenset(values)
    if not scopes:
        raise BadRequest("at least one scope is required")
    for scope in scopes:
        if not SCOPE_PATTERN.fullmatch(scope):
            raise BadRequest(f"invalid scope {scope!r}: use resource:action")
    return scopes


def authenticate(
    presented: str, records: Iterable[TokenRecord], *, auth_mode: str = "token"
) -> Principal:
    """Return the principal whose fingerprint matches ``presented``.

    Step 1 (TOK-1: bounded): the presented value is length-bounded before hashing.
    Step 2 (TOK-2: constant time): every record is compared; no early exit on a match.
    Step 3 (TOK-3: not revoked): a revoked record never authenticates.
    """
    if not presented or len(presented) > MAX_PRESENTED_TOKEN_CHARS:
        raise InvalidCredential("credential not recognised")
    presented_fp = fingerprint(presented).encode()
    match: TokenRecord | None = None
    for record in records:
        if hmac.compare_digest(presented_fp, record.fingerprint.encode()) and not record.revoked:
            match = record
    if match is None:
        raise InvalidCredential("credential not recognised")
    return Principal(id=match.id, scopes=match.scopes, auth_mode=auth_mode)


def parse_bearer(header_value: str | None) -> str | None:
    """The token from an ``Authorization: Bearer`` header, or None if absent/not bearer."""
    if not header_value:
        return None
    scheme, _, value = header_value.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
