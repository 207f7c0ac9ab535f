"""What a bearer JWT's header and claims must say before the relay believes it. Pure.

Why pure and apart from the signature check: these are the decisions (which algorithm,
which type, which issuer, audience, client, time window, scopes), made over parsed
values so every one of them is tested without a key, a clock or a socket. The JOSE
library (``oidc_jwt``) parses the token and checks the signature; the order of the
steps is fixed so the cheapest refusals come first and nothing an attacker writes in a
header can make the relay fetch anything (see ``check_header``).

Every refusal is a ``TokenRejected`` with one of the stable ``auth.*`` codes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from assay.core.admin_config import ADMIN_SCOPE_PREFIX
from assay.core.errors import TokenRejected
from assay.core.tokens import SCOPE_PATTERN
from assay.relay.oidc_config import OidcConfig, normalize_type

#: Claims an ID token carries and an access token does not (OIDC Core §2, §3.1.3.6).
ID_TOKEN_CLAIMS: frozenset[str] = frozenset({"nonce", "at_hash", "c_hash", "s_hash"})
MAX_SCOPES = 256
MAX_SCOPE_CHARS = 256
MAX_ID_CHARS = 255
#: A NumericDate's magnitude bound: 2**53 seconds is past any real time, and every int up
#: to it is exact as a float, so a huge JSON integer is refused before it is converted.
MAX_NUMERIC_DATE = 2**53


@dataclass(frozen=True)
class Verified:
    """Who a verified token names: ``subject`` (``sub``, else the client), the client
    (``azp``, else ``client_id``) and the relay scopes it grants after ``scope_map``."""

    issuer: str
    subject: str
    client: str | None
    scopes: frozenset[str]
    #: The ``admin:*`` scopes the token asked for and did not get (recorded in the audit
    #: record: a provider that grants one is misconfigured or compromised).
    dropped: frozenset[str] = frozenset()


def _reject(code: str, detail: str, subject: str | None = None) -> TokenRejected:
    return TokenRejected(detail, code=f"auth.{code}", subject=subject)


def check_header(header: Mapping[str, Any], policy: OidcConfig) -> str:
    """The ``kid`` to verify with, once the protected header is acceptable.

    1. No ``crit`` and no ``b64`` (RFC 7515 §4.1.11, RFC 7797): the relay understands no
       extension, so a token that needs one is refused rather than half-understood.
    2. ``alg`` is one of ``allowed_algorithms`` (RFC 8725 §3.1): ``none`` and every
       ``HS*`` are never among them, so a token MACed with the provider's public key
       (algorithm confusion) or left unsigned fails here, before any key is looked up.
    3. ``typ`` is one of ``allowed_token_types`` (RFC 9068 §4 step 1, RFC 8725 §3.11):
       an ID token (``id+jwt``, or no type at all) is not an access token.
    4. ``kid`` is a non-empty string. Keys come only from the configured JWKS: ``jku``,
       ``x5u``, ``jwk`` and ``x5c`` name keys the *sender* chose and are ignored
       (RFC 8725 §3.10), so a token cannot point the relay at an attacker's key set.
    """
    if "crit" in header or "b64" in header:
        raise _reject("invalid_credential", "the token needs a JWS extension (crit/b64)")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in policy.allowed_algorithms:
        shown = alg[:16] if isinstance(alg, str) else type(alg).__name__
        raise _reject("algorithm_not_allowed", f"algorithm {shown!r} is not allowed")
    typ = header.get("typ")
    if not isinstance(typ, str) or normalize_type(typ) not in policy.token_types():
        raise _reject("invalid_credential", "the token type is not an allowed access token")
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > MAX_ID_CHARS:
        raise _reject("kid_unknown", "the token names no key id (kid)")
    return kid


def _number(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    # 1. A JSON number that is not a boolean; 2. bounded before any conversion (JSON
    #    integers are unbounded, and float() of a huge one raises OverflowError);
    # 3. finite (NaN and infinities are not dates).
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _reject("invalid_credential", f"claim {name} is not a NumericDate")
    if isinstance(value, int) and not -MAX_NUMERIC_DATE <= value <= MAX_NUMERIC_DATE:
        raise _reject("invalid_credential", f"claim {name} is out of range for a NumericDate")
    if not math.isfinite(value) or abs(value) > MAX_NUMERIC_DATE:
        raise _reject("invalid_credential", f"claim {name} is not a finite NumericDate")
    return float(value)


def _text(claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
        raise _reject("invalid_credential", f"claim {name} is not a short string")
    return value


def scopes_of(value: Any, scope_map: Mapping[str, list[str]]) -> frozenset[str]:
    """The relay scopes a ``scope_claim`` value grants (``granted_and_dropped``)."""
    return granted_and_dropped(value, scope_map)[0]


def granted_and_dropped(
    value: Any, scope_map: Mapping[str, list[str]]
) -> tuple[frozenset[str], frozenset[str]]:
    """The relay scopes a ``scope_claim`` value grants, and the admin ones it dropped.

    1. The value is a space-separated string (RFC 8693 §4.2, RFC 9068 §2.2.3), a list of
       strings, or an object whose keys are the scopes (roles keyed by name); absent is
       no scope. Any other shape, or more than ``MAX_SCOPES``, refuses the token.
    2. Each external scope is mapped by ``scope_map`` when it is a key there, else kept
       as it is; only ``resource:action`` shaped results are kept (a provider's own
       scopes such as ``openid`` grant nothing here).
    3. No ``admin:*`` scope is ever kept, whatever the provider says or the map makes
       of it: the admin listener takes only the relay's own API keys (config refuses a
       map onto one too, ``oidc_config``).
    """
    if value is None:
        return frozenset(), frozenset()
    if isinstance(value, str):
        items: list[Any] = value.split()
    elif isinstance(value, list):
        items = value
    elif isinstance(value, dict):
        items = list(value.keys())
    else:
        raise _reject("invalid_credential", "the scope claim is not a string, list or object")
    if len(items) > MAX_SCOPES:
        raise _reject("invalid_credential", f"the scope claim holds over {MAX_SCOPES} scopes")
    out: set[str] = set()
    dropped: set[str] = set()
    for item in items:
        if not isinstance(item, str) or len(item) > MAX_SCOPE_CHARS:
            raise _reject("invalid_credential", "the scope claim holds a non-string or long item")
        for scope in scope_map.get(item, [item]):
            if scope.startswith(ADMIN_SCOPE_PREFIX):  # 3.
                dropped.add(scope)
            elif SCOPE_PATTERN.fullmatch(scope):
                out.add(scope)
    return frozenset(out), frozenset(dropped)


def check_claims(claims: Mapping[str, Any], policy: OidcConfig, now: float) -> Verified:
    """Accept the claims of a token whose signature already verified, or refuse them.

    Numbered after RFC 9068 §4 (validating a JWT access token) and RFC 7519 §4.1:

    1. Not an ID token: none of ``nonce``, ``at_hash``, ``c_hash``, ``s_hash``.
    2. ``iss`` equals ``issuer`` exactly (§4 step 3): no normalization, no prefix match.
    3. ``aud`` (a string or a list of strings) names one of ``audiences`` (§4 step 4).
    4. ``exp`` is present and ``now < exp + leeway`` (§4 step 7, RFC 7519 §4.1.4).
    5. ``nbf``, when present: ``now + leeway >= nbf``; ``iat``, when present, is not in
       the future by more than the leeway either (RFC 7519 §4.1.5, §4.1.6).
    6. The client (``azp``, else ``client_id``, RFC 9068 §2.2) is one of
       ``allowed_clients`` when that list is not empty.
    7. Someone is named: ``sub`` (RFC 9068 §2.2), else the client; this is the
       principal every audit record carries, with the issuer.
    8. The scopes (``scopes_of``) of ``scope_claim``.

    From step 2 on, the claims are the provider's (the signature verified), so every
    refusal carries the subject for the audit record.
    """
    # 1.
    present = sorted(ID_TOKEN_CLAIMS & claims.keys())
    if present:
        raise _reject("invalid_credential", f"an ID token is not an access token ({present[0]})")
    subject = _text(claims, "sub") or _text(claims, "client_id") or _text(claims, "azp")
    # 2.
    if claims.get("iss") != policy.issuer:
        raise _reject("issuer_mismatch", "the token's issuer is not the configured one", subject)
    # 3.
    aud = claims.get("aud")
    auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if not any(isinstance(a, str) and a in policy.audiences for a in auds):
        raise _reject("audience_mismatch", "the token is not meant for this relay", subject)
    # 4.
    exp = _number(claims, "exp")
    if exp is None:
        raise _reject("invalid_credential", "the token has no expiry (exp)", subject)
    if now >= exp + policy.leeway:
        raise _reject("token_expired", "the token has expired", subject)
    # 5.
    nbf, iat = _number(claims, "nbf"), _number(claims, "iat")
    if nbf is not None and now + policy.leeway < nbf:
        raise _reject("token_not_yet_valid", "the token is not valid yet (nbf)", subject)
    if iat is not None and now + policy.leeway < iat:
        raise _reject("token_not_yet_valid", "the token was issued in the future (iat)", subject)
    # 6.
    client = _text(claims, "azp") or _text(claims, "client_id")
    if policy.allowed_clients and client not in policy.allowed_clients:
        raise _reject("client_not_allowed", "this client may not use the relay", subject)
    # 7.
    if subject is None:
        raise _reject("invalid_credential", "the token names no subject or client")
    # 8.
    scopes, dropped = granted_and_dropped(claims.get(policy.scope_claim), policy.scope_map)
    return Verified(policy.issuer, subject, client, scopes, dropped)
