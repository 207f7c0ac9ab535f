"""Signed answers: they verify, and fail once altered, forged, re-typed or expired."""

from __future__ import annotations

import argparse
import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from assay.cli import relay_cmd
from assay.cli.main import exit_code_for
from assay.core.errors import AssayError, IntegrityError
from assay.relay import jws
from tests.relay.conftest import RelayEnv, Running, start

JOSE = {"Accept": "application/jose"}
RECORD = "/v1/datasets/civil/entities/household/records/H0000001"


async def _signed(running: Running, path: str, key: str = "all") -> str:
    headers = running.env.headers(key) | JOSE
    r = await running.client.get(path, headers=headers)
    assert r.status_code == 200, await r.get_data()
    assert r.headers["content-type"] == "application/jose"
    return str(await r.get_data(as_text=True))


def _now(token: str) -> float:
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    return float(claims["iat"]) + 1


async def test_signed_record_verifies_and_carries_answer_snapshot_and_query(
    running: Running,
) -> None:
    token = await _signed(running, RECORD)
    plain = await (await running.get(RECORD)).get_json()
    pub = jws.load_public_key(running.env.public_pem)
    claims = jws.verify(token, pub, now=_now(token))
    assert claims["answer"] == plain
    assert claims["snapshot"] == plain["snapshot"]
    assert claims["dataset"] == "civil" and claims["iss"] == "example-relay"
    assert claims["query"]["id"] == "H0000001"
    assert claims["query"]["route"].endswith("/records/<record_id>")
    assert claims["exp"] - claims["iat"] == 300
    assert running.audit.records[0]["extra"]["signed"] is True


async def test_signed_page_and_aggregate_verify(running: Running) -> None:
    pub = jws.load_public_key(running.env.public_pem)
    for path in (
        "/v1/datasets/civil/entities/household/records?status=active&limit=3",
        "/v1/datasets/civil/aggregates/people_by_municipality?municipality=M01",
    ):
        token = await _signed(running, path, "stats" if "/aggregates/" in path else "all")
        claims = jws.verify(token, pub, now=_now(token))
        assert claims["query"]["filters"]


async def test_jti_is_fresh_and_the_callers_request_id_is_only_a_claim_of_its_own(
    running: Running,
) -> None:
    """A caller that sends one ``X-Request-Id`` with every request gets two answers with
    two ``jti`` (RFC 7519 4.1.7: unique), each carrying its id as ``request_id``; an id
    that is not visible ASCII (a C1 control, a bidi override) is replaced, so it reaches
    no signed claim, response header or audit record."""
    pub = jws.load_public_key(running.env.public_pem)
    seen = []
    for request_id in ("chosen-by-me", "chosen-by-me", "evil\x9b2J", "a\u202eb"):
        headers = running.env.headers("all") | JOSE | {"X-Request-Id": request_id}
        r = await running.client.get(RECORD, headers=headers)
        token = await r.get_data(as_text=True)
        claims = jws.verify(token, pub, now=_now(token))
        seen.append(claims["jti"])
        assert claims["jti"] != request_id and len(claims["jti"]) >= 22
        echoed = r.headers["X-Request-Id"]
        assert claims["request_id"] == echoed == running.audit.records[-1]["request_id"]
        assert (echoed == request_id) == request_id.isascii() and echoed.isprintable()
    assert len(set(seen)) == len(seen)


async def test_an_unprintable_purpose_never_reaches_the_audit(running: Running) -> None:
    """Served where no purpose is needed (an aggregate), refused on a record read, and
    recorded as absent and marked in both cases: never the raw CSI."""
    bad = {"X-Purpose": "audit\x9b2J\x85x"}
    agg = await running.client.get(
        "/v1/datasets/civil/aggregates/people_by_municipality",
        headers=running.env.headers("agg", purpose=False) | bad,
    )
    read = await running.client.get(RECORD, headers=running.env.headers("all", purpose=False) | bad)
    assert agg.status_code == 200
    assert (await read.get_json())["code"] == "request.purpose_invalid"
    for record in running.audit.records:
        assert record["purpose"] is None and record["extra"]["purpose_invalid"] is True


def _tamper_payload(token: str, change: Any) -> str:
    head, body, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    change(claims)
    new = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{new}.{sig}"


async def test_altered_forged_retyped_or_expired_answer_fails(running: Running) -> None:
    token = await _signed(running, RECORD)
    pub = jws.load_public_key(running.env.public_pem)
    now = _now(token)

    def fails(tok: str, code: str, at: float = now) -> None:
        with pytest.raises(IntegrityError) as info:
            jws.verify(tok, pub, now=at)
        assert info.value.code == code

    fails(_tamper_payload(token, lambda c: c["answer"]["record"].update(status="closed")),
          "answer.signature_invalid")  # fmt: skip
    fails(_tamper_payload(token, lambda c: c.update(exp=c["exp"] + 10**6)),
          "answer.signature_invalid")  # fmt: skip
    forged = jws.sign(Ed25519PrivateKey.generate(), "example-2025", json.loads(
        base64.urlsafe_b64decode(token.split(".")[1] + "==")))  # fmt: skip
    fails(forged, "answer.signature_invalid")
    fails(token, "answer.expired", at=now + 301)
    none_head = base64.urlsafe_b64encode(b'{"alg":"none","typ":"assay-answer+jwt"}').decode()
    fails(none_head.rstrip("=") + "." + token.split(".")[1] + ".", "answer.malformed")
    fails(none_head.rstrip("=") + "." + token.split(".")[1] + ".AAAA", "answer.algorithm_refused")
    typ_head = base64.urlsafe_b64encode(b'{"alg":"EdDSA","typ":"JWT"}').decode().rstrip("=")
    fails(typ_head + "." + ".".join(token.split(".")[1:]), "answer.wrong_type")
    fails("not.a.jws!", "answer.malformed")
    fails(token + ".extra", "answer.malformed")


async def test_answer_from_a_relay_clock_in_the_past_is_stale_today(relay_env: RelayEnv) -> None:
    parts, _ = start(relay_env, clock=lambda: 1_000_000.0)
    async with parts.app.test_app() as app:
        r = await app.test_client().get(RECORD, headers=relay_env.headers("all") | JOSE)
        token = str(await r.get_data(as_text=True))
    with pytest.raises(IntegrityError, match="expired"):
        jws.verify(token, jws.load_public_key(relay_env.public_pem), now=2_000_000.0)


async def test_signing_not_configured_answers_406(relay_env: RelayEnv) -> None:
    relay_env.doc["instance"].pop("answer_signing")
    relay_env.write()
    parts, _ = start(relay_env)
    async with parts.app.test_app() as app:
        r = await app.test_client().get(RECORD, headers=relay_env.headers("all") | JOSE)
        body = await r.get_json()
    assert r.status_code == 406 and body["code"] == "answer.signing_unavailable"


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    relay_cmd.register(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    try:
        return int(args.func(args))
    except AssayError as err:
        return exit_code_for(err)


async def test_cli_verify_answer_accepts_valid_and_refuses_altered(
    running: Running, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = await _signed(running, RECORD)
    pub = tmp_path / "relay.pub"
    pub.write_bytes(running.env.public_pem)
    answer = tmp_path / "answer.jws"
    answer.write_text(token)
    assert _cli("relay", "verify-answer", str(answer), "--public-key", str(pub), "--json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["valid"] and out["claims"]["answer"]["record"]["id"] == "H0000001"
    assert _cli("relay", "verify-answer", token, "--public-key", str(pub)) == 0
    altered = _tamper_payload(token, lambda c: c["answer"]["record"].update(size=99))
    assert _cli("relay", "verify-answer", altered, "--public-key", str(pub)) == 1


def test_cli_generate_signing_key_writes_a_private_key_only_we_can_read(tmp_path: Path) -> None:
    out = tmp_path / "answer.key"
    assert _cli("relay", "generate-signing-key", "--out", str(out)) == 0
    assert out.stat().st_mode & 0o777 == 0o600
    key = jws.load_private_key(out.read_bytes())
    assert jws.public_pem(key) == (tmp_path / "answer.key.pub").read_bytes()
    assert _cli("relay", "generate-signing-key", "--out", str(out)) == 2  # never overwrites
