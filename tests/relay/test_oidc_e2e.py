"""``auth.mode: oidc`` end to end: the real ``assay relay serve`` against a real
authorization server (authlib, tests/relay/idp.py) on loopback, attacked over HTTP.

Every refusal must be a 401 (503 for an unreachable provider) with its stable ``auth.*``
code, never a 500; every request leaves an audit record naming the principal (subject,
issuer, client), never the token.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc.jwk import RSAKey

from assay.core.errors import TOKEN_CODES
from tests.conftest import run_cli
from tests.relay.conftest import RelayEnv, build_env
from tests.relay.idp import AUDIENCE, IdP
from tests.relay.test_e2e import running_relay

pytestmark = pytest.mark.e2e

READ = "/v1/datasets/civil/entities/household/records/H0000001"
META = "/v1/datasets/civil"
PURPOSE = {"X-Purpose": "benefit-eligibility-check"}
ALLOWED = [
    "statistician",
    "reporting",
    "arrays",
    "objects",
    "mapped",
    "meta-only",
    "late",
    "too-late",
]


def oidc_section(idp: IdP, **overrides: Any) -> dict[str, Any]:
    section: dict[str, Any] = {
        "issuer": idp.issuer,
        "audiences": [AUDIENCE],
        "discovery_url": f"{idp.issuer}/.well-known/openid-configuration",
        "allowed_algorithms": [idp.alg],
        "jwks_cache_ttl": "10m",
        "jwks_refresh_min_interval": "1h",
        "leeway": "60s",
        "scope_map": {"role:civil-reader": ["civil:metadata", "civil:read"]},
        "allowed_clients": ALLOWED,
        "allow_insecure_loopback_http": True,
    }
    section.update(overrides)
    return {k: v for k, v in section.items() if v is not None}


def oidc_env(tmp: Path, idp: IdP, **overrides: Any) -> RelayEnv:
    env = build_env(tmp, people=200)
    env.doc["auth"] = {"mode": "oidc", "oidc": oidc_section(idp, **overrides)}
    env.write()
    return env


def register_clients(idp: IdP) -> None:
    every = "civil:metadata civil:read civil:aggregate"
    idp.add_client("reporting", every)
    idp.add_client("arrays", every, extra={"scope": ["civil:metadata", "civil:read"]})
    idp.add_client("objects", every, extra={"scope": {"civil:metadata": {}, "civil:read": {}}})
    idp.add_client("statistician", "civil:metadata civil:aggregate")
    idp.add_client("mapped", "role:civil-reader")
    idp.add_client("meta-only", "civil:metadata")
    idp.add_client("stranger", every)
    idp.add_client("late", every, expires_in=-20)  # expired 20 s ago: inside the 60 s leeway
    idp.add_client("too-late", every, expires_in=-120)  # expired 120 s ago: past it


@pytest.fixture(scope="module")
def idp() -> Iterator[IdP]:
    provider = IdP()
    with provider.serving():
        register_clients(provider)
        yield provider


@pytest.fixture(scope="module")
def relay(idp: IdP, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RelayEnv, str]]:
    tmp = tmp_path_factory.mktemp("oidc-relay")
    env = oidc_env(tmp, idp)
    with running_relay(env, tmp / "relay.log") as (url, _proc):
        yield env, url


def call(url: str, token: str | None, path: str = META) -> tuple[int, str | None]:
    headers = dict(PURPOSE)
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    r = httpx.get(url + path, headers=headers, timeout=30)
    code = r.json().get("code") if r.status_code >= 400 else None
    return r.status_code, code


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict[str, Any], claims: dict[str, Any], mac_key: bytes) -> str:
    """An HS256 token made by the attacker with ``mac_key`` as the secret."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    mac = hmac.new(mac_key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


# --- what a good token gets --------------------------------------------------------------


def test_client_credentials_token_from_the_idp_reads_the_dataset(
    relay: tuple[RelayEnv, str], idp: IdP
) -> None:
    _env, url = relay
    token = idp.token("reporting")
    assert call(url, token) == (200, None)
    assert call(url, token, READ) == (200, None)
    assert call(url, None) == (401, "auth.missing_credential")


@pytest.mark.parametrize("client", ["reporting", "arrays", "objects"])
def test_scope_claim_as_string_array_or_object_grants_the_same_scopes(
    relay: tuple[RelayEnv, str], idp: IdP, client: str
) -> None:
    _env, url = relay
    token = idp.token(client)
    assert call(url, token, READ) == (200, None)
    # civil:aggregate is in none of the three shapes' grants except the string's, and a
    # token that may both read the rows and aggregate them is refused the aggregate
    # (assay.relay.conflicts): it could count suppressed cells back.
    agg = call(url, token, "/v1/datasets/civil/aggregates/people_by_municipality")
    if client == "reporting":
        assert agg == (403, "auth.scope_conflict")
    else:
        assert agg[0] == 403 and agg[1] != "auth.scope_conflict"


def test_a_token_that_only_aggregates_gets_the_aggregate(
    relay: tuple[RelayEnv, str], idp: IdP
) -> None:
    _env, url = relay
    token = idp.token("statistician")
    agg = call(url, token, "/v1/datasets/civil/aggregates/people_by_municipality")
    assert agg == (200, None)
    assert call(url, token, READ)[0] == 403


def test_scope_map_turns_a_provider_role_into_relay_scopes(
    relay: tuple[RelayEnv, str], idp: IdP
) -> None:
    _env, url = relay
    token = idp.token("mapped")
    assert call(url, token, READ) == (200, None)


def test_a_token_without_the_read_scope_is_denied_the_records(
    relay: tuple[RelayEnv, str], idp: IdP
) -> None:
    _env, url = relay
    token = idp.token("meta-only")
    assert call(url, token) == (200, None)
    assert call(url, token, READ) == (403, "auth.scope_denied")


# --- attacks on the signature and the key choice -----------------------------------------


def test_alg_confusion_rs256_public_key_as_hs256_secret_is_refused(
    relay: tuple[RelayEnv, str], idp: IdP
) -> None:
    _env, url = relay
    kid = idp.signing.kid
    claims = idp.claims()
    for public in (
        idp.signing.as_pem(private=False),
        json.dumps(idp.signing.as_dict(private=False)).encode(),
    ):
        hs = forge({"alg": "HS256", "typ": "at+jwt", "kid": kid}, claims, public)
        assert call(url, hs) == (401, "auth.algorithm_not_allowed")
        # The same MAC under a header that claims RS256: it is no RSA signature.
        rs = forge({"alg": "RS256", "typ": "at+jwt", "kid": kid}, claims, public)
        assert call(url, rs) == (401, "auth.token_signature_invalid")


def test_alg_none_is_refused(relay: tuple[RelayEnv, str], idp: IdP) -> None:
    _env, url = relay
    for alg in ("none", "None", "NONE"):
        header = {"alg": alg, "typ": "at+jwt", "kid": idp.signing.kid}
        token = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(idp.claims()).encode())}."
        assert call(url, token) == (401, "auth.algorithm_not_allowed")


def test_kid_pointing_at_an_attackers_jwks_is_never_fetched(
    relay: tuple[RelayEnv, str], idp: IdP
) -> None:
    _env, url = relay
    attacker = IdP()
    with attacker.serving():
        their_jwks = f"{attacker.issuer}/jwks.json"
        both = {"jku": their_jwks, "x5u": their_jwks}
        for header in ({"jku": their_jwks}, {"x5u": their_jwks}, both):
            # Their own kid: unknown here, whatever the header says about where it lives.
            token = attacker.sign(idp.claims(), header)
            assert call(url, token) == (401, "auth.kid_unknown")
            # Our provider's kid, their key: the provider's key does not verify it.
            token = attacker.sign(idp.claims(), header | {"kid": idp.signing.kid})
            assert call(url, token) == (401, "auth.token_signature_invalid")
        # A kid that is itself their URL is an opaque name here, never an address.
        token = attacker.sign(idp.claims(), {"kid": their_jwks, "jku": their_jwks})
        assert call(url, token) == (401, "auth.kid_unknown")
        assert attacker.jwks_hits == 0 and attacker.discovery_hits == 0


def test_an_embedded_jwk_header_is_ignored(relay: tuple[RelayEnv, str], idp: IdP) -> None:
    _env, url = relay
    theirs = RSAKey.generate_key(2048, parameters={"kid": "attacker"})
    jwk = theirs.as_dict(private=False)
    token = idp.sign(idp.claims(), {"jwk": jwk, "kid": "attacker"}, key=theirs)
    assert call(url, token) == (401, "auth.kid_unknown")
    token = idp.sign(idp.claims(), {"jwk": jwk | {"kid": idp.signing.kid},
                                    "kid": idp.signing.kid}, key=theirs)  # fmt: skip
    assert call(url, token) == (401, "auth.token_signature_invalid")


# --- attacks on the claims ---------------------------------------------------------------


def test_expired_inside_the_leeway_is_accepted_and_past_it_refused(
    relay: tuple[RelayEnv, str], idp: IdP
) -> None:
    _env, url = relay
    assert call(url, idp.token("late")) == (200, None)
    assert call(url, idp.token("too-late")) == (401, "auth.token_expired")
    now = int(time.time())
    assert call(url, idp.sign(idp.claims(exp=now - 3600))) == (401, "auth.token_expired")
    assert call(url, idp.sign(idp.claims(exp=None))) == (401, "auth.invalid_credential")


def test_nbf_or_iat_in_the_future_is_refused(relay: tuple[RelayEnv, str], idp: IdP) -> None:
    _env, url = relay
    now = int(time.time())
    assert call(url, idp.sign(idp.claims(nbf=now + 600))) == (401, "auth.token_not_yet_valid")
    assert call(url, idp.sign(idp.claims(iat=now + 600))) == (401, "auth.token_not_yet_valid")
    assert call(url, idp.sign(idp.claims(nbf=now + 30))) == (200, None)  # inside the leeway


def test_a_token_for_another_audience_is_refused(relay: tuple[RelayEnv, str], idp: IdP) -> None:
    _env, url = relay
    for aud in ("another-api", ["another-api", "third"], [], None, 42):
        token = idp.sign(idp.claims(aud=aud))
        assert call(url, token) == (401, "auth.audience_mismatch"), aud
    assert call(url, idp.sign(idp.claims(aud=["another-api", AUDIENCE]))) == (200, None)


def test_a_token_from_another_issuer_is_refused(relay: tuple[RelayEnv, str], idp: IdP) -> None:
    _env, url = relay
    for iss in (idp.issuer + "/", idp.issuer.upper(), "https://evil.example", None):
        token = idp.sign(idp.claims(iss=iss))
        assert call(url, token) == (401, "auth.issuer_mismatch"), iss


def test_an_id_token_is_refused(relay: tuple[RelayEnv, str], idp: IdP) -> None:
    _env, url = relay
    nonce = idp.claims(nonce="n-0S6_WzA2Mj", azp="reporting")
    assert call(url, idp.sign(nonce, {"typ": "JWT"})) == (401, "auth.invalid_credential")
    at_hash = idp.claims(at_hash="77QmUPtjPfzWtF2AnpK9RQ")
    assert call(url, idp.sign(at_hash)) == (401, "auth.invalid_credential")
    for typ in ("id+jwt", "application/id+jwt", None, "JOSE"):
        token = idp.sign(idp.claims(), {"typ": typ})
        assert call(url, token) == (401, "auth.invalid_credential"), typ


def test_a_client_not_allowed_is_refused(relay: tuple[RelayEnv, str], idp: IdP) -> None:
    _env, url = relay
    assert call(url, idp.token("stranger")) == (401, "auth.client_not_allowed")
    # azp wins over client_id (RFC 9068 §2.2): an allowed client_id does not launder it.
    token = idp.sign(idp.claims(azp="stranger", client_id="reporting"))
    assert call(url, token) == (401, "auth.client_not_allowed")


# --- the audit ---------------------------------------------------------------------------


def _records(env: RelayEnv) -> list[dict[str, Any]]:
    audit_dir = Path(env.doc["audit"]["dir"])
    return [
        json.loads(line)
        for f in sorted(audit_dir.glob("audit*.jsonl"))
        for line in f.read_text().splitlines()
        if line.strip()
    ]


def test_every_request_leaves_a_record_with_the_principal_never_the_token(
    relay: tuple[RelayEnv, str], idp: IdP
) -> None:
    env, url = relay
    marker = secrets.token_hex(6)
    good = idp.sign(idp.claims(sub=f"svc-{marker}", azp="reporting"))
    expired = idp.sign(idp.claims(sub=f"late-{marker}", exp=int(time.time()) - 3600))
    assert call(url, good, READ) == (200, None)
    assert call(url, expired, READ) == (401, "auth.token_expired")
    assert call(url, "not-a-jwt", READ) == (401, "auth.invalid_credential")
    records = _records(env)
    text = "\n".join(json.dumps(r) for r in records)
    for token in (good, expired):
        assert token not in text and token.split(".")[2] not in text
    mine = [r for r in records if r.get("principal") == f"svc-{marker}"]
    assert len(mine) == 1 and mine[0]["auth_mode"] == "oidc" and mine[0]["status"] == 200
    assert mine[0]["extra"]["oidc_issuer"] == idp.issuer
    assert mine[0]["extra"]["oidc_client"] == "reporting"
    refused = [r for r in records if r["extra"].get("oidc_refused_subject") == f"late-{marker}"]
    assert len(refused) == 1 and refused[0]["error_code"] == "auth.token_expired"
    assert refused[0]["principal"] is None  # a refused token names no principal


# --- mutation: every changed byte is a typed refusal -------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_mutated_token_is_refused_with_a_typed_code_never_500(
    relay: tuple[RelayEnv, str], idp: IdP, data: st.DataObject
) -> None:
    _env, url = relay
    token = _good_token(idp)
    pos = data.draw(st.integers(0, len(token) - 1))
    char = data.draw(st.characters(min_codepoint=0x21, max_codepoint=0x7E))
    how = data.draw(st.sampled_from(["replace", "insert", "delete"]))
    if how == "replace":
        mutated = token[:pos] + char + token[pos + 1 :]
    elif how == "insert":
        mutated = token[:pos] + char + token[pos:]
    else:
        mutated = token[:pos] + token[pos + 1 :]
    if mutated == token:
        return
    status, code = call(url, mutated)
    assert status == 401 and code in TOKEN_CODES, (how, pos, char, status, code)


_GOOD: dict[str, str] = {}


def _good_token(idp: IdP) -> str:
    if "t" not in _GOOD:
        _GOOD["t"] = idp.token("reporting")
    return _GOOD["t"]


# --- keys that change, and a provider that goes away (each with a relay of its own) -------


@contextlib.contextmanager
def own_relay(tmp: Path, idp: IdP, **overrides: Any) -> Iterator[str]:
    env = oidc_env(tmp, idp, **overrides)
    with running_relay(env, tmp / "relay.log") as (url, _proc):
        yield url


def test_key_rotation_is_picked_up_with_one_refresh(tmp_path: Path) -> None:
    idp = IdP()
    with idp.serving():
        register_clients(idp)
        with own_relay(tmp_path, idp) as url:
            old = idp.token("reporting")
            assert call(url, old) == (200, None)
            assert idp.jwks_hits == 1
            idp.rotate()
            new = idp.token("reporting")
            assert call(url, new) == (200, None)  # unknown kid: one refresh finds it
            assert idp.jwks_hits == 2
            assert call(url, new) == (200, None)
            # The old key is gone from the provider's set, so from the relay's too.
            assert call(url, old) == (401, "auth.kid_unknown")
            assert idp.jwks_hits == 2  # and that unknown kid cost no fetch: rate-limited


def test_a_flood_of_unknown_kids_costs_the_idp_one_fetch(tmp_path: Path) -> None:
    idp = IdP()
    with idp.serving():
        register_clients(idp)
        with own_relay(tmp_path, idp) as url:
            assert call(url, idp.token("reporting")) == (200, None)
            assert idp.jwks_hits == 1
            for _ in range(40):
                made_up = idp.sign(idp.claims(), {"kid": secrets.token_hex(8)})
                assert call(url, made_up) == (401, "auth.kid_unknown")
            assert idp.jwks_hits == 2
            assert call(url, idp.token("reporting")) == (200, None)  # good tokens still pass


def test_idp_down_answers_503_jwks_unavailable(tmp_path: Path) -> None:
    idp = IdP()
    serving = idp.serving()
    serving.__enter__()
    try:
        register_clients(idp)
        jwks = f"{idp.issuer}/jwks.json"
        with own_relay(tmp_path, idp, discovery_url=None, jwks_url=jwks) as url:
            good = idp.token("reporting")
            assert call(url, good) == (200, None)
            serving.__exit__(None, None, None)  # the provider goes away
            idp.rotate()
            rotated = idp.sign(idp.claims())
            assert call(url, rotated) == (503, "auth.jwks_unavailable")
            assert call(url, good) == (200, None)  # the keys held are still within their TTL
    finally:
        serving.__exit__(None, None, None)


def test_idp_unreachable_from_the_start_answers_503_and_the_relay_still_starts(
    tmp_path: Path,
) -> None:
    idp = IdP()
    with idp.serving():
        issuer = idp.issuer
    # Nothing listens there any more: the JWKS is fetched lazily, so the relay starts.
    with own_relay(tmp_path, idp, discovery_url=None, jwks_url=f"{issuer}/jwks.json") as url:
        assert call(url, idp.sign(idp.claims())) == (503, "auth.jwks_unavailable")
        assert httpx.get(url + "/readyz", timeout=10).status_code == 200


def test_discovery_that_fails_stops_the_relay_at_startup(tmp_path: Path) -> None:
    idp = IdP()
    with idp.serving():
        issuer = idp.issuer
    env = oidc_env(tmp_path, idp)
    proc = subprocess.run(
        [sys.executable, "-m", "assay", "relay", "serve", "--config", str(env.config_path)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "auth.oidc.discovery_url" in proc.stderr and "Traceback" not in proc.stderr
    assert issuer.startswith("http://127.0.0.1")


def test_check_config_reads_the_discovery_document(relay: tuple[RelayEnv, str], idp: IdP) -> None:
    env, _url = relay
    before = idp.discovery_hits
    out = run_cli("relay", "check-config", str(env.config_path), "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["auth_mode"] == "oidc"
    assert report["oidc_jwks_url"] == f"{idp.issuer}/jwks.json"
    assert "oidc_discovery" in report["checked"]
    assert idp.discovery_hits == before + 1


def test_readyz_details_need_a_verified_token(relay: tuple[RelayEnv, str], idp: IdP) -> None:
    """The public probe verifies with the keys already held and never fetches."""
    _env, url = relay
    token = idp.token("reporting")
    assert call(url, token) == (200, None)  # the keys are held from here on
    hits = idp.jwks_hits
    shown = httpx.get(url + "/readyz", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert shown.status_code == 200 and "checks" in shown.json()
    forged = idp.sign(idp.claims(), {"kid": secrets.token_hex(8)})
    hidden = httpx.get(url + "/readyz", headers={"Authorization": f"Bearer {forged}"}, timeout=10)
    assert hidden.status_code == 200 and "checks" not in hidden.json()
    assert idp.jwks_hits == hits


@pytest.mark.parametrize("alg", ["ES256", "EdDSA"])
def test_tokens_signed_with_es256_or_eddsa_by_the_idp_are_accepted(
    tmp_path: Path, alg: str
) -> None:
    idp = IdP(alg=alg)
    with idp.serving():
        register_clients(idp)
        with own_relay(tmp_path, idp) as url:
            # authlib's token generator signs only joserfc's "recommended" algorithms, so
            # the EdDSA token is signed by the provider's key directly.
            token = idp.sign(idp.claims()) if alg == "EdDSA" else idp.token("reporting")
            assert call(url, token, READ) == (200, None)
            rs = IdP()  # an RS256 token of the same claims: not an algorithm allowed here
            assert call(url, rs.sign(idp.claims())) == (401, "auth.algorithm_not_allowed")
