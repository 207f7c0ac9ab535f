"""The relay's OIDC resource server: fetching the provider's keys, and the rate limits.

Why a thin adapter: every decision about a token is in the pure ``oidc_jwt`` and
``oidc_claims``; this module only fetches documents (stdlib ``urllib`` in a worker
thread: no proxy from the environment, no redirect, a total deadline and a size bound),
keeps the key set, and decides *when* to fetch:

1. ``discovery_url`` is read once, at startup (``discover``): its ``issuer`` must be the
   configured one and its ``jwks_uri`` must pass the same URL rules as the config; a
   failure stops the relay, so a wiring mistake is not a relay that refuses everyone.
2. The JWKS is fetched on first use and again once it is older than ``jwks_cache_ttl``.
   Keys past their TTL are never used: if the provider cannot be reached then, requests
   get 503 ``auth.jwks_unavailable`` (fail closed; a key the provider withdrew must stop
   verifying), and the next attempt waits ``jwks_refresh_min_interval``.
3. A token whose ``kid`` is not in the set causes one refresh, at most one per
   ``jwks_refresh_min_interval``: a key rotation is picked up at once, a flood of made-up
   kids costs the provider one request per interval. Concurrent requests share a fetch.

The token itself never reaches a log or an audit record: only the subject, the client
and the issuer of a token whose signature verified.
"""

from __future__ import annotations

import json
import logging
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import trio

from assay import __version__
from assay.core.errors import ConfigError, JwksUnavailable, MissingCredential, TokenRejected
from assay.core.tokens import Principal, parse_bearer
from assay.relay import oidc_jwt
from assay.relay.oidc_claims import Verified
from assay.relay.oidc_config import OidcConfig, fetch_url, url_problem

log = logging.getLogger("assay.relay.oidc")

MAX_DOCUMENT_BYTES = 512 * 1024
_CHUNK = 16 * 1024

#: ``(url, timeout seconds) -> body``: blocking; raises ``OSError`` or ``ValueError``.
Fetch = Callable[[str, float], bytes]


@dataclass(frozen=True)
class OidcPrincipal(Principal):
    """A principal from a verified token: ``id`` is its subject; the issuer and client
    go into the audit record beside it."""

    issuer: str = ""
    client: str | None = None
    #: ``admin:*`` scopes the token carried and was not given (``Verified.dropped``).
    dropped: frozenset[str] = frozenset()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect could lead from https to http or to another host: never followed."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def _same_target(url: str) -> None:
    """The URL as urllib will read it names the scheme and host pydantic parsed."""
    ours = urllib.parse.urlsplit(url)
    if ours.scheme not in ("http", "https") or not ours.hostname or ours.username:
        raise ValueError("the URL does not parse the same way for the fetcher")


def fetch_blocking(url: str, timeout: float) -> bytes:
    """GET ``url``: 200 only, at most ``MAX_DOCUMENT_BYTES``, ``timeout`` per read, no
    read started after ``2 * timeout`` (a slow drip is cut off), no proxy, no redirect.
    The caller bounds the whole call in trio as well (a name lookup has no timeout)."""
    _same_target(url)
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        _NoRedirect(),
        urllib.request.HTTPSHandler(context=ssl.create_default_context()),
    )
    request = urllib.request.Request(  # noqa: S310 - scheme checked: http(s) only
        url, headers={"Accept": "application/json", "User-Agent": f"assay-relay/{__version__}"}
    )
    deadline = time.monotonic() + 2 * timeout
    with opener.open(request, timeout=timeout) as response:
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")
        body = bytearray()
        while chunk := response.read(_CHUNK):
            body += chunk
            if len(body) > MAX_DOCUMENT_BYTES:
                raise ValueError(f"document over {MAX_DOCUMENT_BYTES} bytes")
            if time.monotonic() > deadline:
                raise ValueError("document not received in time")
    return bytes(body)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return f"unreachable ({type(exc.reason).__name__})"
    return f"{type(exc).__name__}: {str(exc)[:120]}"


def discover(policy: OidcConfig, fetch: Fetch = fetch_blocking) -> str:
    """The JWKS URL to use: ``jwks_url``, or the discovery document's ``jwks_uri``
    (OpenID Connect Discovery 1.0 §4.3: its ``issuer`` must equal ours). Blocking."""
    if policy.jwks_url is not None:
        return fetch_url(policy.jwks_url)
    assert policy.discovery_url is not None

    def failed(why: str) -> ConfigError:
        return ConfigError(
            f"auth.oidc.discovery_url: {why}",
            code="auth.oidc_discovery_failed",
            path="auth.oidc.discovery_url",
        )

    try:
        doc = json.loads(fetch(fetch_url(policy.discovery_url), policy.fetch_timeout))
    except (OSError, ValueError) as exc:
        raise failed(f"could not read the discovery document: {_reason(exc)}") from None
    if not isinstance(doc, dict):
        raise failed("the discovery document is not a JSON object")
    if doc.get("issuer") != policy.issuer:
        raise failed("the discovery document names another issuer than auth.oidc.issuer")
    jwks_uri = doc.get("jwks_uri")
    if not isinstance(jwks_uri, str):
        raise failed("the discovery document has no jwks_uri")
    why = url_problem(jwks_uri, insecure_loopback=policy.allow_insecure_loopback_http)
    if why is not None:
        raise failed(f"jwks_uri: {why}")
    return fetch_url(jwks_uri)


class OidcVerifier:
    """Bearer JWT to principal, with the provider's keys fetched as the docstring says."""

    def __init__(
        self,
        policy: OidcConfig,
        jwks_url: str,
        *,
        clock: Callable[[], float] = time.time,
        fetch: Fetch = fetch_blocking,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.jwks_url = jwks_url
        self._clock = clock
        self._fetch = fetch
        self._monotonic = monotonic
        self._keys: oidc_jwt.ProviderKeys | None = None
        self._fetched_at = 0.0
        self._failed_at: float | None = None
        self._unknown_kid_at: float | None = None
        self._generation = 0
        self._lock = trio.Lock()
        #: Fetches of the JWKS attempted (for tests and metrics).
        self.fetches = 0

    # --- keys -----------------------------------------------------------------------

    def _fresh(self) -> bool:
        return (
            self._keys is not None
            and self._monotonic() - self._fetched_at < self.policy.jwks_cache_ttl
        )

    async def _refresh(self) -> None:
        """Fetch the JWKS now (the caller holds the lock); ``JwksUnavailable`` if not."""
        self.fetches += 1
        started = self._monotonic()
        try:
            # The thread bounds each read; this bounds what it cannot (a name lookup).
            with trio.fail_after(3 * self.policy.fetch_timeout):
                raw = await trio.to_thread.run_sync(
                    partial(self._fetch, self.jwks_url, self.policy.fetch_timeout),
                    abandon_on_cancel=True,
                )
            keys = oidc_jwt.parse_jwks(raw)
        except (OSError, ValueError, RecursionError, trio.TooSlowError) as exc:
            self._failed_at = self._monotonic()
            log.warning("OIDC JWKS fetch from %s failed: %s", self.jwks_url, _reason(exc))
            raise JwksUnavailable("the identity provider's keys cannot be fetched") from None
        self._keys, self._fetched_at, self._failed_at = keys, started, None
        self._generation += 1
        log.info(
            "OIDC JWKS fetched: %d usable keys%s",
            len(keys.by_kid),
            f", skipped {'; '.join(keys.skipped)[:500]}" if keys.skipped else "",
        )

    async def _ensure_fresh(self) -> None:
        if self._fresh():
            return
        async with self._lock:
            if self._fresh():
                return
            backoff = self.policy.jwks_refresh_min_interval
            if self._failed_at is not None and self._monotonic() - self._failed_at < backoff:
                raise JwksUnavailable("the identity provider's keys cannot be fetched")
            await self._refresh()

    async def _refresh_for_kid(self, generation: int) -> None:
        """One refresh for an unknown kid, unless another request refreshed meanwhile or
        one was made for an unknown kid less than ``jwks_refresh_min_interval`` ago."""
        async with self._lock:
            if self._generation != generation:
                return
            now = self._monotonic()
            limit = self.policy.jwks_refresh_min_interval
            if self._unknown_kid_at is not None and now - self._unknown_kid_at < limit:
                return
            self._unknown_kid_at = now
            await self._refresh()

    # --- tokens ---------------------------------------------------------------------

    def _principal(self, verified: Verified) -> OidcPrincipal:
        return OidcPrincipal(
            id=verified.subject,
            scopes=verified.scopes,
            auth_mode="oidc",
            issuer=verified.issuer,
            client=verified.client,
            dropped=verified.dropped,
        )

    def verify_cached(self, token: str) -> Principal:
        """Synchronous, with the keys held now (never fetches): for the public health
        routes, which must not make the relay call out."""
        if self._keys is None or not self._fresh():
            raise JwksUnavailable("the identity provider's keys are not loaded")
        return self._principal(oidc_jwt.verify(token, self._keys, self.policy, self._clock()))

    async def authenticate(self, headers: Mapping[str, str]) -> Principal:
        """The principal of the request's bearer JWT (headers keyed in lower case)."""
        token = parse_bearer(headers.get("authorization"))
        if token is None:
            raise MissingCredential("this route requires a bearer token")
        await self._ensure_fresh()
        assert self._keys is not None
        generation = self._generation
        try:
            return self._principal(oidc_jwt.verify(token, self._keys, self.policy, self._clock()))
        except oidc_jwt.KidUnknown:
            await self._refresh_for_kid(generation)
        assert self._keys is not None
        return self._principal(oidc_jwt.verify(token, self._keys, self.policy, self._clock()))


def audit_fields(principal: Principal | None, error: BaseException | None) -> dict[str, str]:
    """What the request's audit record adds for OIDC: the issuer and client of a verified
    token, or the subject of one refused after its signature verified (never the token)."""
    if isinstance(principal, OidcPrincipal):
        out = {"oidc_issuer": principal.issuer}
        if principal.client is not None:
            out["oidc_client"] = principal.client
        if principal.dropped:
            # The provider granted what only local credentials hold: kept out, and shown
            # (a few names, each bounded; the audit core bounds the record as a whole).
            names = sorted(principal.dropped)
            out["oidc_dropped_admin_scopes"] = " ".join(n[:64] for n in names[:8]) + (
                f" (+{len(names) - 8} more)" if len(names) > 8 else ""
            )
        return out
    if isinstance(error, TokenRejected) and error.subject is not None:
        return {"oidc_refused_subject": error.subject}
    return {}
