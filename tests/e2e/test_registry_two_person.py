"""Two-person rule and publisher signatures, over HTTP against the real daemon.

A deployment whose policy needs two distinct approvers and a valid Ed25519 signature
by a configured publisher: the attacks are one person approving twice, a signature by
an unknown key, a signature over another digest, and a signature sent with a refused
request that must not be kept.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from assay.registry.policy import signed_message
from tests.conftest import SAMPLES, Deployment, init_deployment, upload

pytestmark = pytest.mark.e2e

ST = (SAMPLES / "sample.safetensors").read_bytes()
PUBLISHER = Ed25519PrivateKey.generate()


def sign(key: Ed25519PrivateKey, digest: str) -> str:
    return base64.b64encode(key.sign(signed_message(digest))).decode()


@pytest.fixture
def strict(tmp_path: Path) -> Iterator[Deployment]:
    dep = init_deployment(tmp_path, max_bytes=1024 * 1024)
    raw = PUBLISHER.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    (dep.dir / "policies" / "strict.yaml").write_text(
        "name: strict\n"
        "required_metadata: [source, license]\n"
        "approvals_required: 2\n"
        "publisher_signature:\n"
        "  required: true\n"
        f"  keys: [{{id: acme, public_key: {base64.b64encode(raw).decode()}}}]\n"
    )
    dep.edit_config("  policy: default\n", "  policy: strict\n")
    dep.create_token("alice", "artifacts:promote", "artifacts:read")
    dep.create_token("bob", "artifacts:promote", "artifacts:read")
    dep.start()
    try:
        yield dep
    finally:
        dep.stop()


def promote(dep: Deployment, who: str, digest: str, sigs: list[tuple[str, str]] = []) -> dict:  # noqa: B006
    body = {"signatures": [{"key_id": k, "signature": s} for k, s in sigs]}
    with dep.client(who) as c:
        for _ in range(50):  # tokens created before start are loaded; bounded anyway
            r = c.post(f"/v1/artifacts/{digest}/promote", json=body)
            if r.status_code != 401:
                break
            time.sleep(0.1)
    return {"status": r.status_code, **r.json()}


def test_two_people_and_a_publisher_signature_promote(strict: Deployment) -> None:
    with strict.client() as c:
        d = upload(c, ST).json()["artifact"]["digest"]
    first = promote(strict, "alice", d, [("acme", sign(PUBLISHER, d))])
    assert first["status"] == 202 and first["promoted"] is False
    second = promote(strict, "bob", d)  # the signature from alice's request was kept
    assert second["status"] == 200 and second["artifact"]["state"] == "trusted", second


def test_one_person_approving_twice_is_still_one_approval(strict: Deployment) -> None:
    with strict.client() as c:
        d = upload(c, ST).json()["artifact"]["digest"]
    sig = [("acme", sign(PUBLISHER, d))]
    assert promote(strict, "alice", d, sig)["status"] == 202
    again = promote(strict, "alice", d, sig)
    assert again["status"] == 202 and again["artifact"]["state"] == "quarantined"


@pytest.mark.parametrize("forgery", ["unknown key", "other digest"])
def test_forged_publisher_signatures_are_refused(strict: Deployment, forgery: str) -> None:
    with strict.client() as c:
        d = upload(c, ST).json()["artifact"]["digest"]
    if forgery == "unknown key":
        sig = ("acme", sign(Ed25519PrivateKey.generate(), d))
    else:
        sig = ("acme", sign(PUBLISHER, "sha256:" + "0" * 64))
    out = promote(strict, "alice", d, [sig])
    assert out["status"] == 422 and out["code"] == "artifact.policy_refused"
    assert any("signature" in r for r in out["reasons"]), out
    # The refused request left nothing behind: its approval was not recorded.
    assert promote(strict, "alice", d, [("acme", sign(PUBLISHER, d))])["status"] == 202
    with strict.client() as c:
        history = c.get(f"/v1/artifacts/{d}").json()["history"]
    assert [h["action"] for h in history].count("approve") == 1
    good = promote(strict, "bob", d)
    assert good["status"] == 200 and good["artifact"]["state"] == "trusted"


def test_the_publisher_cli_makes_the_key_entry_and_signatures_the_policy_accepts(
    tmp_path: Path,
) -> None:
    import json

    from tests.conftest import run_cli

    out = tmp_path / "pub"
    keygen = run_cli("publisher", "keygen", "--id", "acme", "--out", str(out), "--json", check=True)
    keys = json.loads(keygen.stdout)
    entry = keys["policy_key"]
    dep = init_deployment(tmp_path / "dep", max_bytes=1024 * 1024)
    (dep.dir / "policies" / "signed.yaml").write_text(
        "name: signed\nrequired_metadata: [source, license]\npublisher_signature:\n"
        f"  required: true\n  keys: [{{id: {entry['id']}, public_key: {entry['public_key']}}}]\n"
    )
    dep.edit_config("  policy: default\n", "  policy: signed\n")
    dep.start()
    try:
        added = json.loads(dep.cli("add", str(SAMPLES / "sample.safetensors"), "--name",
                                   "pub/model", "--meta", "source=acme", "--meta",
                                   "license=mit", "--json", check=True).stdout)  # fmt: skip
        digest = added["artifact"]["digest"]
        unsigned = dep.cli("promote", digest, "--json")
        assert unsigned.returncode == 1, unsigned.stdout  # policy refusal: no signature
        signature = run_cli("publisher", "sign", digest, "--id", "acme", "--key-file",
                            keys["private_key_file"], check=True).stdout.strip()  # fmt: skip
        promoted = dep.cli("promote", digest, "--signature", signature, "--json", check=True)
        assert json.loads(promoted.stdout)["artifact"]["state"] == "trusted"
    finally:
        dep.stop()


# -- an approval counts only while its token may still approve -----------------------------


def _edit_token(dep: Deployment, token_id: str, **changes: object) -> None:
    """Change one token's record in place, as an admin editing the file offline would."""
    import json

    from assay.core.atomic import atomic_write

    path = dep.dir / "secrets" / "tokens.json"
    doc = json.loads(path.read_text())
    for item in doc["tokens"]:
        if item["id"] == token_id:
            item.update(changes)
    atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode(), mode=0o600)


def _signed(dep: Deployment, who: str) -> tuple[str, dict]:
    with dep.client() as c:
        d = upload(c, ST).json()["artifact"]["digest"]
    first = promote(dep, who, d, [("acme", sign(PUBLISHER, d))])
    assert first["status"] == 202, first
    return d, first


@pytest.mark.parametrize("how", ["revoked", "scope reduced", "removed", "re-created"])
def test_an_approval_by_a_token_that_lost_its_right_does_not_count(
    strict: Deployment, how: str
) -> None:
    d, _first = _signed(strict, "alice")
    if how == "revoked":
        from tests.conftest import run_cli

        run_cli("token", "revoke", "--config", str(strict.config), "--id", "alice", check=True)
    elif how == "scope reduced":
        _edit_token(strict, "alice", scopes=["artifacts:read"])
    elif how == "re-created":
        # The id freed by hand and a new token made under it later: another credential.
        from assay.core.tokens import fingerprint, generate_token

        _edit_token(
            strict,
            "alice",
            fingerprint=fingerprint(generate_token()),
            created="2999-01-01T00:00:00+00:00",
        )
    else:
        import json

        from assay.core.atomic import atomic_write

        path = strict.dir / "secrets" / "tokens.json"
        doc = json.loads(path.read_text())
        doc["tokens"] = [t for t in doc["tokens"] if t["id"] != "alice"]
        atomic_write(path, (json.dumps(doc) + "\n").encode(), mode=0o600)
    # Bob's approval is the second one, but alice's no longer counts: still one.
    second = promote(strict, "bob", d)
    assert second["status"] == 202 and second["artifact"]["state"] == "quarantined", second
    why = {
        "revoked": "revoked",
        "scope reduced": "artifacts:promote",
        "removed": "no token",
        "re-created": "re-created",
    }[how]
    (note,) = [f for f in second["decision"]["failed"] if f.startswith("approvals_required")]
    assert "1/2" in note and "alice" in note and why in note, note
    # The record of bob's approval says so too.
    (record,) = [
        x
        for x in strict.audit_records()
        if x["action"] == "artifact.approve" and x["principal"] == "bob" and x["target"] == d
    ]
    assert any("alice" in r and why in r for r in record["reasons"]), record["reasons"]
    # A third person with a valid token makes two that count.
    strict.create_token("carol", "artifacts:promote", "artifacts:read")
    third = promote(strict, "carol", d)
    assert third["status"] == 200 and third["artifact"]["state"] == "trusted", third
    (promoted,) = [x for x in strict.audit_records() if x["action"] == "artifact.promote"]
    assert promoted["extra"]["approvers"] == "bob,carol"
    assert "alice" in promoted["extra"]["not_counted"]


def test_an_approval_counts_again_only_if_the_token_is_valid_again(strict: Deployment) -> None:
    """Scope restored (the same token id and fingerprint): its approval counts again."""
    d, _first = _signed(strict, "alice")
    _edit_token(strict, "alice", scopes=["artifacts:read"])
    assert promote(strict, "bob", d)["status"] == 202
    _edit_token(strict, "alice", scopes=["artifacts:promote", "artifacts:read"])
    again = promote(strict, "bob", d)
    assert again["status"] == 200 and again["artifact"]["state"] == "trusted", again
