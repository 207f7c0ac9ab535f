"""The OIDC resource server without sockets: config refusals, the pure claim and header
checks, real keys of every allowed type, JWKS parsing, a byte-mutation search, and the
fetch schedule (TTL, one refresh per interval for unknown kids) against a fake provider.
"""

from __future__ import annotations

import copy
import json
import secrets
import time
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jws, jwt
from joserfc.jwk import ECKey, OctKey, OKPKey, RSAKey
from joserfc.registry import HeaderParameter

from assay.core.errors import TOKEN_CODES, ConfigError, JwksUnavailable, TokenRejected
from assay.relay import oidc_jwt
from assay.relay.config import parse_config
from assay.relay.oidc import OidcVerifier, discover
from assay.relay.oidc_claims import check_claims, scopes_of
from assay.relay.oidc_config import OidcConfig
from tests.relay.conftest import example_doc

ISSUER = "https://idp.example.gov"
KEYS = {
    "RS256": lambda kid: RSAKey.generate_key(2048, parameters={"kid": kid}),
    "ES256": lambda kid: ECKey.generate_key("P-256", parameters={"kid": kid}),
    "EdDSA": lambda kid: OKPKey.generate_key("Ed25519", parameters={"kid": kid}),
}


def policy(**kw: Any) -> OidcConfig:
    base: dict[str, Any] = {
        "issuer": ISSUER,
        "audiences": ["assay-relay"],
        "jwks_url": f"{ISSUER}/jwks",
        "allowed_algorithms": ["RS256", "ES256", "EdDSA"],
    }
    base.update(kw)
    return OidcConfig.model_validate({k: v for k, v in base.items() if v is not None})


def claims(**kw: Any) -> dict[str, Any]:
    now = int(time.time())
    out: dict[str, Any] = {"iss": ISSUER, "aud": "assay-relay", "sub": "svc", "exp": now + 300,
                           "iat": now, "client_id": "reporting", "scope": "civil:read"}  # fmt: skip
    out.update(kw)
    return {k: v for k, v in out.items() if v is not None}


def sign(key: Any, alg: str, body: dict[str, Any], **header: Any) -> str:
    head = {"alg": alg, "typ": "at+jwt", "kid": key.kid, **header}
    return jwt.encode(head, body, key, algorithms=[alg], default_type=None)


def keyset(*keys: Any) -> oidc_jwt.ProviderKeys:
    doc = {"keys": [k.as_dict(private=False) for k in keys]}
    return oidc_jwt.parse_jwks(json.dumps(doc).encode())


def code_of(token: str, keys: oidc_jwt.ProviderKeys, pol: OidcConfig | None = None) -> str:
    with pytest.raises(TokenRejected) as info:
        oidc_jwt.verify(token, keys, pol or policy(), time.time())
    return info.value.code


# --- config ------------------------------------------------------------------------------


def relay_doc(auth: dict[str, Any]) -> dict[str, Any]:
    doc = example_doc()
    doc["auth"] = auth
    return doc


def load(auth: dict[str, Any]) -> Any:
    import yaml

    return parse_config(yaml.safe_dump(relay_doc(auth)))


def oidc_auth(**kw: Any) -> dict[str, Any]:
    discovery = f"{ISSUER}/.well-known/openid-configuration"
    section: dict[str, Any] = {"issuer": ISSUER, "audiences": ["assay-relay"],
                               "discovery_url": discovery}  # fmt: skip
    section.update(kw)
    return {"mode": "oidc", "oidc": {k: v for k, v in section.items() if v is not None}}


def test_a_good_oidc_section_loads_with_durations_and_defaults() -> None:
    cfg = load(oidc_auth(jwks_cache_ttl="10m", leeway="90s", jwks_refresh_min_interval=30))
    oidc = cfg.auth.oidc
    assert cfg.auth.mode == "oidc"
    assert (oidc.jwks_cache_ttl, oidc.leeway, oidc.jwks_refresh_min_interval) == (600, 90, 30)
    assert oidc.allowed_algorithms == ["RS256"]
    assert oidc.token_types() == {"jwt", "at+jwt"}


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"allowed_algorithms": ["HS256"]}, "asymmetric"),
        ({"allowed_algorithms": ["RS256", "hs512"]}, "asymmetric"),
        ({"allowed_algorithms": ["none"]}, "asymmetric"),
        ({"allowed_algorithms": ["PS256"]}, "not one of"),
        ({"allowed_algorithms": []}, "allowed_algorithms"),
        ({"leeway": 301}, "leeway"),
        ({"leeway": "6m"}, "leeway"),
        ({"jwks_url": f"{ISSUER}/jwks"}, "exactly one"),
        ({"discovery_url": None}, "exactly one"),
        ({"discovery_url": "http://idp.example.gov/.well-known/openid-configuration"}, "https"),
        ({"issuer": "http://127.0.0.1:9000"}, "https"),
        ({"allowed_token_types": ["id+jwt"]}, "ID tokens"),
        ({"allowed_token_types": ["JWT", "JOSE"]}, "ID tokens"),
        ({"discovery_url": "https://user:pw@idp.example.gov/x"}, "user info"),
        ({"scope_map": {"role:x": ["civil:nothing"]}}, "no dataset or entity uses"),
        ({"scope_map": {"role:x": ["Not A Scope"]}}, "resource:action"),
        ({"audiences": []}, "audiences"),
        ({"surprise": 1}, "unknown key"),
    ],
)
def test_an_unsafe_oidc_section_is_refused_at_load(change: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(oidc_auth(**change))
    assert needle in info.value.detail


@pytest.mark.parametrize(
    "url",
    ["http://localhost:9000", "http://10.0.0.5:9000", "http://169.254.169.254", "http://[::2]"],
)
def test_plain_http_needs_a_loopback_ip_literal_even_with_the_flag(url: str) -> None:
    with pytest.raises(ConfigError, match="loopback IP literal"):
        load(oidc_auth(issuer=url, discovery_url=f"{url}/d", allow_insecure_loopback_http=True))


def test_plain_http_to_loopback_loads_only_with_the_explicit_flag() -> None:
    url = "http://127.0.0.1:9000"
    with pytest.raises(ConfigError, match="https"):
        load(oidc_auth(issuer=url, discovery_url=f"{url}/d"))
    cfg = load(oidc_auth(issuer=url, discovery_url=f"{url}/d", allow_insecure_loopback_http=True))
    assert cfg.auth.oidc.allow_insecure_loopback_http is True


def test_one_auth_mode_at_a_time() -> None:
    base = example_doc()["auth"]
    with pytest.raises(ConfigError, match="one auth mode at a time"):
        load(oidc_auth() | {"api_keys": base["api_keys"]})
    with pytest.raises(ConfigError, match=r"auth\.mode is not oidc"):
        load(base | {"oidc": oidc_auth()["oidc"]})
    with pytest.raises(ConfigError, match=r"needs an auth\.oidc section"):
        load({"mode": "oidc"})
    assert load(copy.deepcopy(base)).auth.mode == "api_key"  # the default: unchanged


# --- the pure checks ---------------------------------------------------------------------


def test_scope_claim_in_all_three_shapes_and_the_map() -> None:
    mapping = {"role:reader": ["civil:read", "civil:metadata"]}
    shapes = (
        "civil:aggregate role:reader openid",
        ["civil:aggregate", "role:reader", "openid"],
        {"civil:aggregate": {"org": "x"}, "role:reader": {}, "openid": True},
    )
    for value in shapes:
        assert scopes_of(value, mapping) == {"civil:aggregate", "civil:read", "civil:metadata"}
    assert scopes_of(None, mapping) == frozenset()
    for bad in (42, [1, 2], ["x" * 300], " ".join(f"a:b{i}" for i in range(300))):
        with pytest.raises(TokenRejected):
            scopes_of(bad, mapping)


def test_a_non_default_scope_claim_is_read() -> None:
    pol = policy(scope_claim="urn:zitadel:iam:org:project:roles")
    got = check_claims(
        claims(scope=None, **{pol.scope_claim: {"civil:read": {}}}), pol, time.time()
    )
    assert got.scopes == {"civil:read"}


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"iss": ISSUER + "/"}, "auth.issuer_mismatch"),
        ({"aud": ["x", 1]}, "auth.audience_mismatch"),
        ({"exp": True}, "auth.invalid_credential"),
        ({"exp": float("inf")}, "auth.invalid_credential"),
        ({"exp": "9999999999"}, "auth.invalid_credential"),
        ({"exp": -61}, "auth.token_expired"),
        ({"exp": -60}, "auth.token_expired"),
        ({"nbf": 61}, "auth.token_not_yet_valid"),
        ({"iat": 61}, "auth.token_not_yet_valid"),
        ({"nonce": "abc"}, "auth.invalid_credential"),
        ({"c_hash": "abc"}, "auth.invalid_credential"),
        ({"sub": None, "client_id": None}, "auth.invalid_credential"),
        ({"sub": 7}, "auth.invalid_credential"),
    ],
)
def test_each_claim_refusal_has_its_code(change: dict[str, Any], code: str) -> None:
    """Times are offsets from now (leeway 60 s): -60 is exactly at the edge, refused."""
    now = 1_800_000_000.0
    body = claims(exp=int(now) + 300, iat=int(now))
    body.update({k: (now + v if k in ("exp", "nbf", "iat") and type(v) is int else v)
                 for k, v in change.items()})  # fmt: skip
    with pytest.raises(TokenRejected) as info:
        check_claims({k: v for k, v in body.items() if v is not None}, policy(), now)
    assert info.value.code == code


def test_the_leeway_accepts_just_inside_its_edges() -> None:
    now = 1_800_000_000.0
    body = claims(exp=now - 59, nbf=now + 60, iat=now + 60)
    assert check_claims(body, policy(), now).subject == "svc"


def test_allowed_clients_prefers_azp_and_refuses_a_missing_client() -> None:
    pol = policy(allowed_clients=["reporting"])
    assert check_claims(claims(), pol, time.time()).client == "reporting"
    for change in ({"azp": "other"}, {"client_id": None}):
        with pytest.raises(TokenRejected) as info:
            check_claims(claims(**change), pol, time.time())
        assert info.value.code == "auth.client_not_allowed"


# --- real keys ---------------------------------------------------------------------------


@pytest.mark.parametrize("alg", sorted(KEYS))
def test_every_allowed_algorithm_verifies_with_its_own_key_only(alg: str) -> None:
    key = KEYS[alg]("k1")
    keys = keyset(key)
    got = oidc_jwt.verify(sign(key, alg, claims()), keys, policy(), time.time())
    assert (got.subject, got.scopes) == ("svc", {"civil:read"})
    # Not allowed by this deployment: refused before any key is used.
    others = [a for a in KEYS if a != alg]
    assert code_of(sign(key, alg, claims()), keys, policy(allowed_algorithms=others)) == (
        "auth.algorithm_not_allowed"
    )


def test_a_key_of_another_type_under_the_same_kid_does_not_verify() -> None:
    rsa, ec = KEYS["RS256"]("same"), KEYS["ES256"]("same")
    token = sign(ec, "ES256", claims())
    assert code_of(token, keyset(rsa)) == "auth.token_signature_invalid"
    assert oidc_jwt.verify(token, keyset(rsa, ec), policy(), time.time()).subject == "svc"


def test_jwks_keeps_only_public_signature_keys() -> None:
    good = KEYS["RS256"]("good")
    small = RSAKey.generate_key(1024, parameters={"kid": "small"}, auto_kid=False)
    oct_key = OctKey.generate_key(256, parameters={"kid": "oct"})
    private = KEYS["ES256"]("private")
    enc = KEYS["RS256"]("enc")
    doc = {"keys": [
        good.as_dict(private=False), small.as_dict(private=False), oct_key.as_dict(),
        private.as_dict(private=True), enc.as_dict(private=False) | {"use": "enc"},
        {"kty": "RSA"}, "not an object",
    ]}  # fmt: skip
    keys = oidc_jwt.parse_jwks(json.dumps(doc).encode())
    assert set(keys.by_kid) == {"good"}
    assert len(keys.skipped) == 6
    for bad in (b"[]", b'{"keys": {}}', json.dumps({"keys": [{}] * 65}).encode()):
        with pytest.raises(ValueError):
            oidc_jwt.parse_jwks(bad)


def test_an_hs256_token_against_an_oct_key_in_the_jwks_is_still_refused() -> None:
    """Even if a provider published a symmetric key, it is dropped and HS256 is refused."""
    oct_key = OctKey.generate_key(256, parameters={"kid": "oct"})
    token = jwt.encode({"alg": "HS256", "typ": "at+jwt", "kid": "oct"}, claims(), oct_key)
    keys = oidc_jwt.parse_jwks(json.dumps({"keys": [oct_key.as_dict()]}).encode())
    assert code_of(token, keys) == "auth.algorithm_not_allowed"
    pol = policy()
    object.__setattr__(pol, "allowed_algorithms", ["HS256"])  # past the config's refusal
    assert code_of(token, keys, pol) == "auth.kid_unknown"  # the oct key is not in the set


def test_crit_and_b64_headers_are_refused() -> None:
    """A correctly signed token that needs an extension the relay does not know."""
    key = KEYS["RS256"]("k1")
    registry = jws.JWSRegistry(header_registry={"ext": HeaderParameter("ext", "int")})
    body = json.dumps(claims())
    for extra in ({"crit": ["ext"], "ext": 1}, {"b64": True}, {"crit": ["b64"], "b64": False}):
        header = {"alg": "RS256", "typ": "at+jwt", "kid": "k1", **extra}
        token = jws.serialize_compact(header, body, key, registry=registry)
        assert code_of(token, keyset(key)) == "auth.invalid_credential"


_KEY = KEYS["RS256"]("mut")
_KEYS = keyset(_KEY)
_TOKEN = sign(_KEY, "RS256", claims(exp=int(time.time()) + 86_400))


@settings(max_examples=400, deadline=None)
@given(
    pos=st.integers(0, len(_TOKEN) - 1),
    char=st.characters(),
    how=st.sampled_from(["replace", "insert", "delete", "swap"]),
)
def test_a_mutated_token_is_refused_with_a_typed_code(pos: int, char: str, how: str) -> None:
    t = _TOKEN
    if how == "replace":
        mutated = t[:pos] + char + t[pos + 1 :]
    elif how == "insert":
        mutated = t[:pos] + char + t[pos:]
    elif how == "delete":
        mutated = t[:pos] + t[pos + 1 :]
    else:
        mutated = t[:pos] + t[pos + 1 : pos + 2] + t[pos : pos + 1] + t[pos + 2 :]
    if mutated == t:
        return
    with pytest.raises(TokenRejected) as info:
        oidc_jwt.verify(mutated, _KEYS, policy(), time.time())
    assert info.value.code in TOKEN_CODES


# --- the fetch schedule, against a fake provider -------------------------------------------


class FakeProvider:
    """A JWKS source the verifier calls instead of the network; counts its fetches."""

    def __init__(self, *keys: Any) -> None:
        self.keys = list(keys)
        self.calls = 0
        self.down = False

    def __call__(self, url: str, timeout: float) -> bytes:
        self.calls += 1
        if self.down:
            raise OSError("connection refused")
        return json.dumps({"keys": [k.as_dict(private=False) for k in self.keys]}).encode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_ttl_refetches_and_a_provider_down_past_the_ttl_is_503() -> None:
    key = KEYS["RS256"]("k1")
    provider, mono = FakeProvider(key), Clock()
    pol = policy(jwks_cache_ttl=60, jwks_refresh_min_interval=30)
    v = OidcVerifier(pol, pol.jwks_url or "", fetch=provider, monotonic=mono)
    good = bearer(sign(key, "RS256", claims()))
    assert (await v.authenticate(good)).id == "svc"
    assert (await v.authenticate(good)).id == "svc" and provider.calls == 1
    mono.now += 61
    provider.down = True
    with pytest.raises(JwksUnavailable):
        await v.authenticate(good)
    with pytest.raises(JwksUnavailable):  # within the back-off: not even tried
        await v.authenticate(good)
    assert provider.calls == 2
    mono.now += 31
    provider.down = False
    assert (await v.authenticate(good)).id == "svc" and provider.calls == 3


async def test_concurrent_unknown_kids_share_one_refresh() -> None:
    old, new = KEYS["RS256"]("old"), KEYS["RS256"]("new")
    provider, mono = FakeProvider(old), Clock()
    pol = policy(jwks_refresh_min_interval=3600)
    v = OidcVerifier(pol, "u", fetch=provider, monotonic=mono)
    await v.authenticate(bearer(sign(old, "RS256", claims())))
    provider.keys = [new]
    results: list[str] = []

    async def one(token: str) -> None:
        try:
            results.append((await v.authenticate(bearer(token))).id)
        except TokenRejected as exc:
            results.append(exc.code)

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(one, sign(new, "RS256", claims()))
        for _ in range(10):
            nursery.start_soon(one, sign(new, "RS256", claims(), kid=secrets.token_hex(4)))
    assert results.count("svc") == 10 and results.count("auth.kid_unknown") == 10
    assert provider.calls == 2


def test_discovery_checks_the_issuer_and_the_jwks_uri() -> None:
    pol = policy(jwks_url=None, discovery_url=f"{ISSUER}/.well-known/openid-configuration")

    def serving(doc: Any) -> Any:
        return lambda url, timeout: json.dumps(doc).encode()

    assert discover(pol, serving({"issuer": ISSUER, "jwks_uri": f"{ISSUER}/k"})) == f"{ISSUER}/k"
    for doc, needle in (
        ({"issuer": "https://other", "jwks_uri": f"{ISSUER}/k"}, "another issuer"),
        ({"issuer": ISSUER}, "no jwks_uri"),
        ({"issuer": ISSUER, "jwks_uri": "http://idp.example.gov/k"}, "https"),
        ([], "not a JSON object"),
    ):
        with pytest.raises(ConfigError, match=needle):
            discover(pol, serving(doc))


async def test_a_fetch_that_hangs_is_cut_off_and_is_503(autojump_clock: Any) -> None:
    """A provider (or a name lookup) that never answers: the trio-side bound fires."""
    import threading

    release = threading.Event()

    def hanging(url: str, timeout: float) -> bytes:
        release.wait(30)
        return b'{"keys": []}'

    pol = policy(fetch_timeout=1)
    v = OidcVerifier(pol, "u", fetch=hanging)
    try:
        with pytest.raises(JwksUnavailable):
            await v.authenticate(bearer("x.y.z"))
    finally:
        release.set()
