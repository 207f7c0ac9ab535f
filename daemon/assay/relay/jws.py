"""Signed answers: compact JWS (RFC 7515) with EdDSA over Ed25519 (RFC 8037).

Why: a caller who forwards an answer (to a court, an auditor, another agency) needs proof
that this relay gave it, over this snapshot, for this query, and that it is still fresh.
The claims carry the answer, the snapshot digest, the normalized query and an expiry; a
verifier refuses any other algorithm (no ``none``, no HMAC confusion), any other ``typ``,
a bad signature (forged or altered), and an expired answer. The signature is checked
before the payload is parsed. Pure: ``now`` is passed in.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from assay.core.errors import ConfigError, IntegrityError

TYP = "assay-answer+jwt"
MAX_JWS_CHARS = 8 * 1024 * 1024
CLOCK_SKEW_SECONDS = 60


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    """Unpadded base64url in its one canonical spelling (RFC 7515 2 and appendix C):
    ignored trailing bits set, or any other alphabet, make another token of the same
    bytes, so they are refused rather than verified as the original."""
    if not text or not text.isascii() or len(text) % 4 == 1:
        raise ValueError("not base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not canonical base64url")
    return data


def _fail(code: str, detail: str) -> IntegrityError:
    return IntegrityError(detail, code=code)


def sign(key: Ed25519PrivateKey, key_id: str, claims: dict[str, Any]) -> str:
    header = {"alg": "EdDSA", "typ": TYP, "kid": key_id}
    signing_input = (
        _b64(json.dumps(header, sort_keys=True, separators=(",", ":")).encode())
        + "."
        + _b64(json.dumps(claims, sort_keys=True, separators=(",", ":"), default=str).encode())
    )
    return signing_input + "." + _b64(key.sign(signing_input.encode()))


def verify(token: str, key: Ed25519PublicKey, *, now: float) -> dict[str, Any]:
    """The claims of a valid, unexpired answer; ``IntegrityError`` with a code otherwise."""
    token = token.strip()
    if len(token) > MAX_JWS_CHARS or token.count(".") != 2:
        raise _fail("answer.malformed", "not a compact JWS")
    head_b64, body_b64, sig_b64 = token.split(".")
    try:
        header = json.loads(_unb64(head_b64))
        signature = _unb64(sig_b64)
    except (ValueError, binascii.Error, UnicodeDecodeError, RecursionError):
        raise _fail("answer.malformed", "JWS header or signature is not valid") from None
    if not isinstance(header, dict) or header.get("alg") != "EdDSA" or "crit" in header:
        raise _fail("answer.algorithm_refused", "only EdDSA answers without crit are accepted")
    if header.get("typ") != TYP:
        raise _fail("answer.wrong_type", f"typ must be {TYP}")
    try:
        key.verify(signature, f"{head_b64}.{body_b64}".encode())
    except InvalidSignature:
        raise _fail(
            "answer.signature_invalid", "signature does not verify: forged or altered"
        ) from None
    try:
        claims = json.loads(_unb64(body_b64))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise _fail("answer.malformed", "JWS payload is not JSON") from None
    if not isinstance(claims, dict):
        raise _fail("answer.malformed", "JWS payload is not an object")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int | float) or not isinstance(iat, int | float):
        raise _fail("answer.malformed", "answer lacks numeric exp and iat")
    if now >= exp:
        raise _fail("answer.expired", "answer has expired; ask the relay again")
    if iat > now + CLOCK_SKEW_SECONDS:
        raise _fail("answer.not_yet_valid", "answer was issued in the future")
    for claim in ("iss", "dataset", "snapshot", "query", "answer"):
        if claim not in claims:
            raise _fail("answer.malformed", f"answer lacks the {claim} claim")
    return claims


def answer_claims(
    *,
    issuer: str,
    dataset: str,
    snapshot: str,
    query: dict[str, Any],
    answer: Any,
    now: float,
    ttl_seconds: int,
    answer_id: str,
    request_id: str,
) -> dict[str, Any]:
    """``jti`` is ``answer_id``, the relay's own unique id for this answer (RFC 7519
    4.1.7); the caller's ``X-Request-Id`` is only ``request_id``, for correlation with
    the audit record, since a caller may send one id with every request."""
    return {
        "iss": issuer,
        "iat": int(now),
        "exp": int(now) + ttl_seconds,
        "jti": answer_id,
        "request_id": request_id,
        "dataset": dataset,
        "snapshot": snapshot,
        "query": query,
        "answer": answer,
    }


def load_private_key(data: bytes) -> Ed25519PrivateKey:
    """PEM (PKCS#8) or 64 hex characters of seed."""
    text = data.strip()
    try:
        if text.startswith(b"-----BEGIN"):
            key = serialization.load_pem_private_key(text, password=None)
        else:
            key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(text.decode()))
    except (ValueError, TypeError, UnicodeDecodeError):
        raise ConfigError("answer signing key is not an Ed25519 key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError("answer signing key is not an Ed25519 key")
    return key


def load_public_key(data: bytes) -> Ed25519PublicKey:
    """PEM (SubjectPublicKeyInfo) or 64 hex characters of the raw public key."""
    text = data.strip()
    try:
        if text.startswith(b"-----BEGIN"):
            key = serialization.load_pem_public_key(text)
        else:
            key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(text.decode()))
    except (ValueError, TypeError, UnicodeDecodeError):
        raise ConfigError("public key is not an Ed25519 key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError("public key is not an Ed25519 key")
    return key


def public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
