"""Tokens: only fingerprints on disk, constant-time checks, fail closed."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from assay.core import tokenfile
from assay.core.errors import Conflict, InvalidCredential, ScopeDenied, SecretError
from assay.core.tokens import TOKEN_BYTES, authenticate, fingerprint, generate_token, parse_bearer


def test_generated_tokens_carry_at_least_32_random_bytes() -> None:
    token = generate_token()
    assert token.startswith("assay_")
    assert len(token) - len("assay_") >= (TOKEN_BYTES * 4) // 3
    assert generate_token() != token


def test_token_file_stores_only_fingerprints_at_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    raw, record = tokenfile.create(path, "alice", ["artifacts:read"])
    text = path.read_text()
    assert raw not in text
    assert raw[6:] not in text
    assert fingerprint(raw) in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert record.scopes == {"artifacts:read"}


def test_authenticate_finds_the_right_principal(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    raw_a, _ = tokenfile.create(path, "alice", ["artifacts:read"])
    raw_b, _ = tokenfile.create(path, "bob", ["artifacts:promote"])
    records = tokenfile.load(path)
    assert authenticate(raw_a, records).id == "alice"
    assert authenticate(raw_b, records).id == "bob"


def test_wrong_token_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    tokenfile.create(path, "alice", ["artifacts:read"])
    with pytest.raises(InvalidCredential):
        authenticate(generate_token(), tokenfile.load(path))


def test_fingerprint_itself_is_not_a_credential(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    _raw, record = tokenfile.create(path, "alice", ["artifacts:read"])
    with pytest.raises(InvalidCredential):
        authenticate(record.fingerprint, tokenfile.load(path))


def test_revoked_token_no_longer_authenticates(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    raw, _ = tokenfile.create(path, "alice", ["artifacts:read"])
    tokenfile.revoke(path, "alice")
    with pytest.raises(InvalidCredential):
        authenticate(raw, tokenfile.load(path))


def test_huge_presented_token_is_refused_before_hashing() -> None:
    with pytest.raises(InvalidCredential):
        authenticate("x" * 100_000, [])


def test_scope_is_enforced(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    raw, _ = tokenfile.create(path, "reader", ["artifacts:read"])
    principal = authenticate(raw, tokenfile.load(path))
    principal.require("artifacts:read")
    with pytest.raises(ScopeDenied):
        principal.require("artifacts:promote")


def test_duplicate_token_id_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    tokenfile.create(path, "alice", ["artifacts:read"])
    with pytest.raises(Conflict):
        tokenfile.create(path, "alice", ["artifacts:read"])


def test_world_readable_token_file_stops_startup(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    tokenfile.create(path, "alice", ["artifacts:read"])
    path.chmod(0o644)
    with pytest.raises(SecretError, match="0600"):
        tokenfile.load(path)


def test_symlinked_token_file_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    tokenfile.create(real, "alice", ["artifacts:read"])
    link = tmp_path / "tokens.json"
    os.symlink(real, link)
    with pytest.raises(SecretError):
        tokenfile.load(link)


def test_corrupt_token_file_stops_startup(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text("{not json")
    path.chmod(0o600)
    with pytest.raises(SecretError, match="not valid JSON"):
        tokenfile.load(path)


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer", "Bearer   "])
def test_non_bearer_headers_yield_no_token(header: str | None) -> None:
    assert parse_bearer(header) is None


def test_token_is_not_left_behind_when_its_audit_record_cannot_be_written(tmp_path: Path) -> None:
    from assay.cli.admin import init_deployment
    from assay.cli.main import main

    init_deployment(tmp_path / "d")
    audit_dir = tmp_path / "d" / "state" / "audit"
    # A torn tail makes the audit log refuse appends until recovered.
    log = next(audit_dir.glob("audit*.jsonl"))
    with log.open("ab") as f:
        f.write(b'{"torn":')
    code = main(["token", "create", "--config", str(tmp_path / "d" / "config.yaml"),
                 "--id", "sneaky", "--scope", "artifacts:read"])  # fmt: skip
    assert code != 0
    ids = [r.id for r in tokenfile.load(tmp_path / "d" / "secrets" / "tokens.json")]
    assert "sneaky" not in ids


def test_standing_sees_a_revocation_on_disk_at_once(tmp_path: Path) -> None:
    """An approval counts only while its token may approve: the authenticator answers
    from the token file as it is now, without waiting for its poll."""
    from assay.core.authn import Authenticator

    path = tmp_path / "tokens.json"
    for who in ("alice", "bob"):
        tokenfile.create(path, who, ["artifacts:promote", "artifacts:read"])
    tokenfile.create(path, "reader", ["artifacts:read"])
    auth = Authenticator(path)
    auth.load()
    later = "2999-01-01T00:00:00.000Z"
    given = {"alice": later, "bob": later, "reader": later, "ghost": later}
    assert auth.standing(given, "artifacts:promote") == {
        "reader": "token no longer holds artifacts:promote",
        "ghost": "no token with this id any more",
    }
    tokenfile.revoke(path, "alice")
    assert auth.standing({"alice": later, "bob": later}, "artifacts:promote") == {
        "alice": "token revoked"
    }


def test_an_approval_by_an_earlier_token_of_the_same_id_does_not_count(tmp_path: Path) -> None:
    """The id was freed (file edited by hand) and a new token made under it: the new
    holder is not the person who approved."""
    from assay.core.authn import Authenticator

    path = tmp_path / "tokens.json"
    tokenfile.create(path, "alice", ["artifacts:promote"])
    auth = Authenticator(path)
    auth.load()
    (record,) = tokenfile.load(path)
    before = "2000-01-01T00:00:00.000Z"
    assert auth.standing({"alice": before}, "artifacts:promote") == {
        "alice": "token re-created under this id after it approved"
    }
    # The same second as the creation (``created`` has no fraction) still counts.
    same_second = record.created.replace("+00:00", ".999Z")
    assert auth.standing({"alice": same_second}, "artifacts:promote") == {}
    assert auth.standing({"alice": "not a time"}, "artifacts:promote") == {}
