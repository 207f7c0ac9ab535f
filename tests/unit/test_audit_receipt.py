"""Signed checkpoints, receipts and inclusion proofs: checkable with the public key only."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from assay.cli.main import main
from assay.core.audit import files
from assay.core.audit.checkpoint import (
    Checkpoint,
    key_id,
    parse_checkpoint,
    parse_proof,
    sign_checkpoint,
    verify_checkpoint,
    verify_proof,
)
from assay.core.audit.keys import generate_keypair, load_private_key
from assay.core.audit.reader import prove
from assay.core.audit.receipt import (
    ReceiptInvalid,
    make_receipt,
    parse_receipt,
    verify_receipt,
)
from assay.core.errors import BadRequest, ChainBroken
from tests.unit.audit_util import SIGNING, TS, open_log, write_log

PUB = SIGNING.public_key()


def _checkpoint(size: int = 7) -> Checkpoint:
    return sign_checkpoint(SIGNING, log_id="assay", size=size, head_hash="a" * 64,
                           merkle_root="b" * 64, ts=TS)  # fmt: skip


def _record(seq: int = 8) -> dict[str, object]:
    return {"seq": seq, "record_hash": "c" * 64, "log_id": "assay", "ts": TS,
            "action": "artifact.promote", "target": "sha256:" + "d" * 64}  # fmt: skip


# -- checkpoints ------------------------------------------------------------------------


def test_key_id_is_sha256_prefix_of_raw_public_key() -> None:
    raw = PUB.public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert key_id(PUB) == hashlib.sha256(raw).hexdigest()[:16]


def test_checkpoint_round_trips_and_verifies() -> None:
    cp = sign_checkpoint(SIGNING, log_id="assay", size=3, head_hash="a" * 64,
                         merkle_root="b" * 64, ts=TS)  # fmt: skip
    again = parse_checkpoint(cp.to_json())
    assert again == cp
    verify_checkpoint(again, [PUB])
    verify_checkpoint(again, {cp.key_id: PUB})


@pytest.mark.parametrize("field", ["size", "head_hash", "merkle_root", "ts", "log_id"])
def test_checkpoint_tampering_breaks_the_signature(field: str) -> None:
    cp = sign_checkpoint(SIGNING, log_id="assay", size=3, head_hash="a" * 64,
                         merkle_root="b" * 64, ts=TS)  # fmt: skip
    value: Any = {"size": 4, "head_hash": "e" * 64, "merkle_root": "f" * 64, "ts": "later",
             "log_id": "other"}[field]  # fmt: skip
    forged = dataclasses.replace(cp, **{field: value})
    with pytest.raises(ChainBroken) as err:
        verify_checkpoint(forged, [PUB])
    assert err.value.code == "audit.checkpoint_bad_signature"


def test_checkpoint_from_unknown_key_is_refused() -> None:
    other = Ed25519PrivateKey.generate()
    cp = sign_checkpoint(other, log_id="assay", size=1, head_hash="a" * 64,
                         merkle_root="b" * 64, ts=TS)  # fmt: skip
    with pytest.raises(ChainBroken) as err:
        verify_checkpoint(cp, [PUB])
    assert err.value.code == "audit.checkpoint_unknown_key"
    # Claiming the trusted key's id does not help a forger.
    with pytest.raises(ChainBroken) as err:
        verify_checkpoint(dataclasses.replace(cp, key_id=key_id(PUB)), [PUB])
    assert err.value.code == "audit.checkpoint_bad_signature"


@pytest.mark.parametrize("text", ["", "[]", "{}", '{"size": -1}', "nan"])
def test_malformed_checkpoints_are_bad_requests(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_checkpoint(text)


# -- receipts ---------------------------------------------------------------------------


def test_receipt_verifies_in_every_form() -> None:
    r = make_receipt(SIGNING, _record(), _checkpoint())
    assert verify_receipt(r, PUB) == r
    assert verify_receipt(r.to_json(), PUB) == r
    assert verify_receipt(r.to_header(), PUB) == r
    assert verify_receipt(r.to_dict(), [PUB]) == r
    header = r.to_header()
    assert "=" not in header and "\n" not in header and len(header) < 2048
    assert json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))) == r.to_dict()
    assert r.ts == TS and r.seq == 8 and r.action == "artifact.promote"


def test_receipt_without_checkpoint() -> None:
    r = make_receipt(SIGNING, _record(1), None, ts="2026-01-01T00:00:00.000Z")
    assert verify_receipt(r.to_header(), PUB).checkpoint is None


@pytest.mark.parametrize("field", ["seq", "record_hash", "log_id", "ts", "action", "target"])
def test_receipt_tampering_is_detected(field: str) -> None:
    r = make_receipt(SIGNING, _record(), _checkpoint())
    value: Any = {"seq": 9, "record_hash": "e" * 64, "log_id": "x", "ts": "x", "action": "x.y",
             "target": None}[field]  # fmt: skip
    with pytest.raises(ReceiptInvalid):
        verify_receipt(dataclasses.replace(r, **{field: value}), PUB)


def test_receipt_with_tampered_embedded_checkpoint_is_refused() -> None:
    cp = _checkpoint()
    bad_cp = dataclasses.replace(cp, size=99)
    r = make_receipt(SIGNING, _record(), bad_cp)  # signed over the bad checkpoint
    with pytest.raises(ReceiptInvalid) as err:
        verify_receipt(r, PUB)
    assert err.value.code == "audit.checkpoint_bad_signature"


def test_only_the_private_key_holder_can_issue_receipts() -> None:
    forger = Ed25519PrivateKey.generate()
    forged = make_receipt(forger, _record(), None)
    with pytest.raises(ReceiptInvalid) as err:
        verify_receipt(forged, PUB)
    assert err.value.code == "audit.receipt_unknown_key"
    spoofed = dataclasses.replace(forged, key_id=key_id(PUB))
    with pytest.raises(ReceiptInvalid):
        verify_receipt(spoofed, PUB)


@pytest.mark.parametrize("text", ["", "not base64 !", "e30", "[]", '{"seq": 1}'])
def test_malformed_receipts_are_bad_requests(text: str) -> None:
    with pytest.raises(BadRequest):
        parse_receipt(text)


# -- inclusion proofs on a real log -----------------------------------------------------


def test_prove_every_record_of_a_rotated_log(tmp_path: Path) -> None:
    write_log(tmp_path, 23, rotate_bytes=2000, batch=3, signing_key=SIGNING)
    with open_log(tmp_path, signing_key=SIGNING) as log:
        cp = log.checkpoint_now(force=True)
        assert cp is not None and cp.size == 23
        assert len(files.segment_paths(tmp_path)) > 3
        for seq in range(1, 24):
            proof = parse_proof(log.prove(seq).to_json())
            record = verify_proof(proof, [PUB])
            assert record["seq"] == seq
    # A proof is refused when its record is altered or its checkpoint re-signed elsewhere.
    proof = parse_proof(log.prove(5).to_json())
    with pytest.raises(ChainBroken):
        verify_proof(dataclasses.replace(proof, record=proof.record.replace("user", "usex")), [PUB])
    with pytest.raises(ChainBroken):
        verify_proof(proof, [Ed25519PrivateKey.generate().public_key()])
    with pytest.raises(BadRequest):
        log.prove(24)


def test_prove_refuses_a_log_that_no_longer_matches(tmp_path: Path) -> None:
    write_log(tmp_path, 5, signing_key=SIGNING, checkpoint_every=5)
    path = tmp_path / files.CURRENT
    path.write_bytes(path.read_bytes().replace(b"user-1", b"user-9"))
    with pytest.raises(ChainBroken):
        prove(tmp_path, 2)


# -- CLI --------------------------------------------------------------------------------


def test_cli_prove_verify_proof_and_receipt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log_dir = tmp_path / "log"
    priv, pub = generate_keypair(tmp_path / "keys")
    signing = load_private_key(priv)
    records = write_log(log_dir, 6, signing_key=signing, checkpoint_every=6)

    assert main(["audit", "prove", "4", "--dir", str(log_dir), "--json"]) == 0
    proof_file = tmp_path / "proof.json"
    proof_file.write_text(capsys.readouterr().out)
    assert main(["audit", "verify-proof", str(proof_file), "--public-key", str(pub)]) == 0
    assert "proof ok: record 4" in capsys.readouterr().out

    with open_log(log_dir, signing_key=signing) as log:
        receipt = make_receipt(signing, records[3], log.latest_checkpoint)
    assert main(["receipt", "verify", receipt.to_header(), "--public-key", str(pub),
                 "--log", str(log_dir)]) == 0  # fmt: skip
    assert "present in the log" in capsys.readouterr().out

    _other_priv, other_pub = generate_keypair(tmp_path / "other")
    assert main(["receipt", "verify", receipt.to_header(), "--public-key", str(other_pub)]) == 1
    assert main(["audit", "verify-proof", str(proof_file), "--public-key", str(other_pub)]) == 1
    capsys.readouterr()

    # The log rewritten after the receipt was issued: the receipt exposes it.
    path = log_dir / files.CURRENT
    lines = path.read_bytes().split(b"\n")
    path.write_bytes(b"\n".join(lines[:3]) + b"\n")
    assert main(["receipt", "verify", receipt.to_header(), "--public-key", str(pub),
                 "--log", str(log_dir), "--json"]) == 1  # fmt: skip
    assert "audit.receipt_mismatch" in capsys.readouterr().out
