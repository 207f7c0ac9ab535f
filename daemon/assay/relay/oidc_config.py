"""``auth.oidc``: the relay as an OpenID Connect resource server, checked at config load.

Why its own module: what an operator may configure decides what an attacker may send.
Every choice that would let a forged token through is refused here, before the relay
starts: a shared-secret or unsigned algorithm (``HS*``, ``none``), a leeway over five
minutes, both or neither of ``discovery_url`` and ``jwks_url``, and any fetch URL that is
not ``https`` (plain ``http`` only to a loopback IP literal, and only with the explicit
``allow_insecure_loopback_http``, which a posture check flags). URLs are parsed by
pydantic's URL parser, once; the fetcher is handed the normalized form it produced. Pure.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, HttpUrl, TypeAdapter, field_validator, model_validator

from assay.core.admin_config import ADMIN_SCOPE_PREFIX
from assay.core.schema import Strict
from assay.core.tokens import SCOPE_PATTERN

#: What a relay may accept: asymmetric signatures only (RFC 8725 §3.1, §3.2).
ALGORITHMS: frozenset[str] = frozenset({"RS256", "ES256", "EdDSA"})
#: ``typ`` values a deployment may allow (RFC 9068 §2.1, RFC 7519 §5.1), normalized.
TOKEN_TYPES: frozenset[str] = frozenset({"jwt", "at+jwt"})
MAX_LEEWAY = 300
_DURATION = re.compile(r"([0-9]{1,7})(s|m|h)?")
_UNITS = {"s": 1, "m": 60, "h": 3600, None: 1}
_URL: TypeAdapter[HttpUrl] = TypeAdapter(HttpUrl)


def seconds(value: Any) -> Any:
    """``60``, ``"60s"``, ``"10m"`` or ``"1h"`` as whole seconds; anything else is left for
    the field's own type check to refuse."""
    if isinstance(value, str):
        m = _DURATION.fullmatch(value.strip())
        if m is not None:
            return int(m.group(1)) * _UNITS[m.group(2)]
    return value


Seconds = Annotated[int, BeforeValidator(seconds)]


def normalize_type(value: str) -> str:
    """RFC 7515 §4.1.9: ``typ`` is compared case-insensitively, ``application/`` omitted."""
    lowered = value.lower()
    return lowered.removeprefix("application/")


def url_problem(value: str, *, insecure_loopback: bool) -> str | None:
    """Why ``value`` may not be fetched or trusted as an issuer, or None if it may.

    1. It parses as an absolute http(s) URL, without user info (a credential in a URL
       ends up in logs) and without a fragment.
    2. ``https``: any host (its certificate is checked against the system trust store).
    3. ``http``: only with ``allow_insecure_loopback_http`` and only to a loopback IP
       literal (127.0.0.0/8 or ::1); a name such as ``localhost`` is resolved by DNS,
       which an attacker on the network may answer.
    """
    try:
        url = _URL.validate_python(value)
    except ValueError:
        return "not an absolute http(s) URL"
    if url.username is not None or url.password is not None:
        return "user info is not allowed in the URL"
    if url.fragment is not None:
        return "a fragment is not allowed in the URL"
    if url.scheme == "https":
        return None
    if not insecure_loopback:
        return "must be https (set allow_insecure_loopback_http for a loopback test IdP)"
    host = (url.host or "").strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return "plain http is allowed only to a loopback IP literal (127.0.0.0/8, ::1)"
    return None


def fetch_url(value: str) -> str:
    """The normalized URL the fetcher requests (after ``url_problem`` accepted it)."""
    return str(_URL.validate_python(value))


class OidcConfig(Strict):
    """How a bearer JWT is verified; see docs/relay.md "Authentication: OIDC"."""

    #: Compared verbatim with the token's ``iss`` (and the discovery document's).
    issuer: str = Field(min_length=1, max_length=512)
    #: A token is accepted when its ``aud`` names at least one of these.
    audiences: list[str] = Field(min_length=1, max_length=16)
    discovery_url: str | None = Field(default=None, max_length=2048)
    jwks_url: str | None = Field(default=None, max_length=2048)
    allowed_algorithms: list[str] = Field(default_factory=lambda: ["RS256"], min_length=1)
    #: How long a fetched key set is used before it is fetched again.
    jwks_cache_ttl: Seconds = Field(default=600, ge=1, le=86_400)
    #: At most one fetch for an unknown ``kid`` per this many seconds (a flood of made-up
    #: kids costs the provider one request per interval, not one per token).
    jwks_refresh_min_interval: Seconds = Field(default=60, ge=1, le=86_400)
    #: Per fetch; the answer is bounded too (``oidc.MAX_DOCUMENT_BYTES``).
    fetch_timeout: Seconds = Field(default=5, ge=1, le=60)
    #: Clock skew allowed on ``exp``, ``nbf`` and ``iat``.
    leeway: Seconds = Field(default=60, ge=0, le=MAX_LEEWAY)
    scope_claim: str = Field(default="scope", min_length=1, max_length=128)
    #: External scope (or role) -> the relay scopes it grants.
    scope_map: dict[str, list[str]] = Field(default_factory=dict, max_length=256)
    #: ``azp`` (else ``client_id``) must be one of these; empty: any client.
    allowed_clients: list[str] = Field(default_factory=list, max_length=256)
    allowed_token_types: list[str] = Field(default_factory=lambda: ["JWT", "at+jwt"], min_length=1)
    #: Development only: plain http to a loopback IP literal. Posture flags it.
    allow_insecure_loopback_http: bool = False

    @field_validator("allowed_algorithms")
    @classmethod
    def _algorithms(cls, values: list[str]) -> list[str]:
        for v in values:
            if v.upper().startswith("HS") or v.lower() == "none":
                raise ValueError(
                    f"{v!r} is refused: a resource server accepts only asymmetric signatures "
                    "(HS* would make the provider's public key a signing secret; none "
                    "is unsigned)"
                )
            if v not in ALGORITHMS:
                raise ValueError(f"{v!r} is not one of {sorted(ALGORITHMS)}")
        if len(set(values)) != len(values):
            raise ValueError("duplicate algorithm")
        return values

    @field_validator("allowed_token_types")
    @classmethod
    def _token_types(cls, values: list[str]) -> list[str]:
        for v in values:
            if normalize_type(v) not in TOKEN_TYPES:
                raise ValueError(
                    f"{v!r} is not an access-token type (JWT, at+jwt); ID tokens are refused"
                )
        return values

    @field_validator("scope_map")
    @classmethod
    def _scope_map(cls, values: dict[str, list[str]]) -> dict[str, list[str]]:
        for external, scopes in values.items():
            if not external or len(external) > 256 or not scopes or len(scopes) > 64:
                raise ValueError(f"{external[:64]!r}: 1-256 characters mapped to 1-64 scopes")
            if any(s.startswith(ADMIN_SCOPE_PREFIX) for s in scopes):
                raise ValueError(
                    f"{external[:64]!r}: an identity provider's scope can never "
                    "map to an admin:* scope (those are for API keys only)"
                )
        return values

    @model_validator(mode="after")
    def _urls(self) -> OidcConfig:
        if (self.discovery_url is None) == (self.jwks_url is None):
            raise ValueError("set exactly one of discovery_url and jwks_url")
        insecure = self.allow_insecure_loopback_http
        for name in ("issuer", "discovery_url", "jwks_url"):
            value = getattr(self, name)
            if value is not None and (why := url_problem(value, insecure_loopback=insecure)):
                raise ValueError(f"{name}: {why}")
        return self

    def token_types(self) -> frozenset[str]:
        return frozenset(normalize_type(t) for t in self.allowed_token_types)


def scope_map_problems(cfg: OidcConfig, scopes: set[str]) -> list[str]:
    """``path: problem`` for every mapped scope that is malformed or that no dataset or
    entity uses (a typo would silently grant nothing)."""
    problems: list[str] = []
    for external, mapped in cfg.scope_map.items():
        for j, scope in enumerate(mapped):
            at = f"auth.oidc.scope_map[{external[:64]!r}][{j}]"
            if not SCOPE_PATTERN.fullmatch(scope):
                problems.append(f"{at}: {scope[:64]!r} is not a resource:action scope")
            elif scope not in scopes:
                problems.append(f"{at}: no dataset or entity uses {scope!r}")
    return problems
