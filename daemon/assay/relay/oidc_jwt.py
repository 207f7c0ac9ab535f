"""Bearer JWTs through joserfc: parse, pick the provider's key by ``kid``, verify. Pure.

Why joserfc and not hand-written checks: parsing the compact form (canonical base64url,
a JSON object header), checking key and algorithm agree, and the signature itself are
the library's; this module only decides which key it is given and in what order the
checks run. One parser decides: the header the claim checks see is the one joserfc
parsed and then verified the signature over.

A provider's JWKS is parsed here too (``parse_jwks``), bounded, keeping only public
signature keys of the types the allowed algorithms can use: a symmetric (``oct``) key,
a private key, an RSA key under 2048 bits or a key without ``kid`` is never usable.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from typing import Any

from joserfc import jws
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey, import_key

from assay.core.errors import TokenRejected
from assay.relay.oidc_claims import Verified, check_claims, check_header
from assay.relay.oidc_config import OidcConfig

#: RFC 9864 deprecates the name "EdDSA" in favour of "Ed25519"; providers still send it.
warnings.filterwarnings("ignore", message="EdDSA is deprecated", category=SecurityWarning)

MAX_TOKEN_CHARS = 16 * 1024
#: joserfc's default header bound (512 characters) is below what a provider may send
#: (a long kid with x5t#S256); still bounded, well before the token's own bound.
MAX_HEADER_CHARS = 4096
_PARSER = jws.JWSRegistry()
_PARSER.max_header_length = MAX_HEADER_CHARS
MAX_JWKS_KEYS = 64
MIN_RSA_BITS = 2048
#: Which key an algorithm needs: key type and, for EC and OKP, the curve.
KEY_FOR: dict[str, tuple[str, frozenset[str] | None]] = {
    "RS256": ("RSA", None),
    "ES256": ("EC", frozenset({"P-256"})),
    "EdDSA": ("OKP", frozenset({"Ed25519", "Ed448"})),
}


class KidUnknown(TokenRejected):
    """The token's ``kid`` is not in the key set held now: one refresh may find it."""

    def __init__(self, kid: str) -> None:
        super().__init__(
            "the token's key id is not in the provider's key set", code="auth.kid_unknown"
        )
        self.kid = kid


@dataclass(frozen=True)
class ProviderKeys:
    """The usable keys of one fetched JWKS, by ``kid``, and what was left out and why."""

    by_kid: dict[str, tuple[Key, ...]] = field(default_factory=dict)
    skipped: tuple[str, ...] = ()

    def __contains__(self, kid: object) -> bool:
        return kid in self.by_kid


def _usable(entry: dict[str, Any], at: str) -> tuple[str, Key] | str:
    """``(kid, public key)`` for a usable JWKS entry, else why it is not usable."""
    kid = entry.get("kid")
    if not isinstance(kid, str) or not kid:
        return f"{at}: no kid"
    kty = entry.get("kty")
    if kty not in ("RSA", "EC", "OKP"):
        return f"{at} ({kid[:32]}): key type {str(kty)[:8]!r} is not a public signature key"
    if entry.get("use", "sig") != "sig":
        return f"{at} ({kid[:32]}): use is not sig"
    if "d" in entry or "p" in entry or "k" in entry:
        return f"{at} ({kid[:32]}): private key material in a public key set"
    try:
        key = import_key(entry)
    except (JoseError, ValueError, TypeError) as exc:
        return f"{at} ({kid[:32]}): {type(exc).__name__}"
    if isinstance(key, RSAKey) and key.public_key.key_size < MIN_RSA_BITS:
        return f"{at} ({kid[:32]}): RSA key under {MIN_RSA_BITS} bits"
    return kid, key


def parse_jwks(raw: bytes) -> ProviderKeys:
    """The usable keys of a JWKS document (RFC 7517 §5); a document that is not a key
    set at all raises ``ValueError`` (the fetcher reports the provider unusable)."""
    doc = json.loads(raw)
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError("not a JWK Set (no keys array)")  # noqa: TRY004 - one family
    entries = doc["keys"]
    if len(entries) > MAX_JWKS_KEYS:
        raise ValueError(f"over {MAX_JWKS_KEYS} keys")
    by_kid: dict[str, list[Key]] = {}
    skipped: list[str] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            skipped.append(f"keys[{i}]: not an object")
            continue
        got = _usable(entry, f"keys[{i}]")
        if isinstance(got, str):
            skipped.append(got)
        else:
            by_kid.setdefault(got[0], []).append(got[1])
    return ProviderKeys({k: tuple(v) for k, v in by_kid.items()}, tuple(skipped))


def _fits(key: Key, alg: str) -> bool:
    """The key is of the type (and curve) ``alg`` needs, and does not say otherwise."""
    kty, curves = KEY_FOR[alg]
    if key.key_type != kty:
        return False
    if curves is not None and isinstance(key, ECKey | OKPKey) and key.get("crv") not in curves:
        return False
    declared = key.get("alg")
    return declared is None or declared == alg


def verify(token: str, keys: ProviderKeys, policy: OidcConfig, now: float) -> Verified:
    """The token's subject and scopes, or a ``TokenRejected`` naming the failed step.

    1. Bounded: at most ``MAX_TOKEN_CHARS`` ASCII characters, before any parsing.
    2. joserfc parses the compact JWS: three segments, canonical base64url, a JSON
       object header with ``alg`` (a JWE or anything else is refused).
    3. The header decides (``oidc_claims.check_header``): no extension, an allowed
       ``alg``, an allowed ``typ``, a ``kid``.
    4. The key is the JWKS key with that ``kid`` (``KidUnknown`` if there is none, so
       the caller may refresh once) that fits ``alg``; none fits: signature invalid.
    5. joserfc verifies the signature with that key, for that one algorithm.
    6. The payload is a JSON object; its claims decide (``oidc_claims.check_claims``).
    """
    # 1.
    if not token or len(token) > MAX_TOKEN_CHARS or not token.isascii():
        raise TokenRejected("not a bearer JWT", code="auth.invalid_credential")
    # 2.
    try:
        obj = jws.extract_compact(token.encode("ascii"), registry=_PARSER)
        header = obj.headers()
    except (JoseError, ValueError, TypeError, UnicodeError):
        raise TokenRejected("not a well-formed JWT", code="auth.invalid_credential") from None
    # 3.
    kid = check_header(header, policy)
    alg: str = header["alg"]
    # 4.
    if kid not in keys:
        raise KidUnknown(kid)
    fitting = [k for k in keys.by_kid[kid] if _fits(k, alg)]
    if not fitting:
        raise TokenRejected(
            "the key named by kid cannot verify this algorithm",
            code="auth.token_signature_invalid",
        )
    # 5.
    try:
        registry = jws.JWSRegistry(algorithms=[alg], strict_check_header=False)
        registry.max_header_length = MAX_HEADER_CHARS
        ok = jws.validate_compact(obj, fitting[0], registry=registry)
    except (JoseError, ValueError, TypeError):
        ok = False
    if not ok:
        raise TokenRejected("the signature does not verify", code="auth.token_signature_invalid")
    # 6.
    try:
        claims = json.loads(obj.payload or b"")
    except (ValueError, UnicodeError, RecursionError):
        claims = None
    if not isinstance(claims, dict):
        raise TokenRejected("the payload is not a JSON object", code="auth.invalid_credential")
    return check_claims(claims, policy, now)
