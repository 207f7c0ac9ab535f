"""Signed checkpoints: ``{log_id, size, head_hash, merkle_root, ts, key_id}`` + Ed25519.

Why: the HMAC chain proves records were written by a holder of the HMAC key, but that key
lives on the same host as the log, so whoever steals it can rewrite history and re-chain.
A checkpoint signed with a separate Ed25519 key, and copied off the host (journald, a
receipt in a client's hands), pins "the first ``size`` records hash to ``merkle_root`` and
end in ``head_hash``". Truncation or a rewrite before ``size`` then fails verification,
and anyone holding only the public key can check it.

Signature: Ed25519 over ``b"assay-checkpoint-v1\\x00" + canonical(body)`` where ``body`` is
every field but ``sig``. ``key_id`` is the first 16 hex digits of SHA-256 of the raw
32-byte public key. Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from assay.core.audit import merkle
from assay.core.audit.chain import canonical
from assay.core.errors import BadRequest, ChainBroken

CHECKPOINT_DOMAIN: Final = b"assay-checkpoint-v1\x00"
#: Unsigned member a checkpoint line in ``checkpoints.jsonl`` may carry (Merkle state).
STATE_MEMBER: Final = "state"

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_KEY_ID = re.compile(r"[0-9a-f]{16}\Z")
_LOG_ID = re.compile(r"[A-Za-z0-9._-]{1,64}\Z")
_FIELDS: Final = ("log_id", "size", "head_hash", "merkle_root", "ts", "key_id", "sig")

KeyRing = Mapping[str, Ed25519PublicKey]


def b64u_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64u_decode(text: str) -> bytes:
    """Strict base64url without padding (padding tolerated); ``ValueError`` otherwise."""
    if not re.fullmatch(r"[A-Za-z0-9_-]*={0,2}", text):
        raise ValueError("not base64url")
    stripped = text.rstrip("=")
    try:
        return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))
    except binascii.Error as exc:
        raise ValueError(f"not base64url: {exc}") from None


def raw_public(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey) -> str:
    """First 16 hex digits of SHA-256 over the raw 32-byte public key."""
    return hashlib.sha256(raw_public(public_key)).hexdigest()[:16]


def keyring(keys: Iterable[Ed25519PublicKey] | KeyRing) -> dict[str, Ed25519PublicKey]:
    """Public keys by ``key_id``: accepts a list of keys or an existing mapping."""
    if isinstance(keys, Mapping):
        return dict(keys)
    return {key_id(k): k for k in keys}


@dataclass(frozen=True)
class Checkpoint:
    log_id: str
    size: int
    head_hash: str
    merkle_root: str
    ts: str
    key_id: str
    sig: str

    def body(self) -> dict[str, Any]:
        d = asdict(self)
        del d["sig"]
        return d

    def signed_bytes(self) -> bytes:
        return CHECKPOINT_DOMAIN + canonical(self.body())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> bytes:
        """Compact canonical JSON (no newline)."""
        return canonical(self.to_dict())


def sign_checkpoint(
    private_key: Ed25519PrivateKey,
    *,
    log_id: str,
    size: int,
    head_hash: str,
    merkle_root: str,
    ts: str,
) -> Checkpoint:
    unsigned = Checkpoint(
        log_id, size, head_hash, merkle_root, ts, key_id(private_key.public_key()), ""
    )
    sig = private_key.sign(unsigned.signed_bytes())
    return Checkpoint(log_id, size, head_hash, merkle_root, ts, unsigned.key_id, b64u_encode(sig))


def parse_checkpoint(data: bytes | str | Mapping[str, Any]) -> Checkpoint:
    """A checkpoint from JSON text or a dict; ``BadRequest`` if its shape is wrong.

    Only the shape is checked here; ``verify_checkpoint`` checks the signature.
    """
    obj: Any = data
    if isinstance(data, bytes | str):
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise BadRequest(
                f"checkpoint is not JSON: {exc}", code="audit.bad_checkpoint"
            ) from None
    if not isinstance(obj, Mapping):
        raise BadRequest("checkpoint must be a JSON object", code="audit.bad_checkpoint")
    keys = set(obj) - {STATE_MEMBER}
    if keys != set(_FIELDS):
        raise BadRequest(
            f"checkpoint fields must be exactly {', '.join(_FIELDS)}", code="audit.bad_checkpoint"
        )
    size = obj["size"]
    ok = (
        isinstance(obj["log_id"], str) and _LOG_ID.match(obj["log_id"]) is not None
        and type(size) is int and size >= 0
        and isinstance(obj["head_hash"], str) and _HEX64.match(obj["head_hash"]) is not None
        and isinstance(obj["merkle_root"], str) and _HEX64.match(obj["merkle_root"]) is not None
        and isinstance(obj["ts"], str) and len(obj["ts"]) <= 64
        and isinstance(obj["key_id"], str) and _KEY_ID.match(obj["key_id"]) is not None
        and isinstance(obj["sig"], str) and len(obj["sig"]) <= 128
    )  # fmt: skip
    if not ok:
        raise BadRequest("checkpoint has a malformed field", code="audit.bad_checkpoint")
    return Checkpoint(**{k: obj[k] for k in _FIELDS})


def signature_problem(cp: Checkpoint, keys: KeyRing) -> tuple[str, str] | None:
    """``(kind, detail)`` with kind ``unknown_key`` or ``bad_signature``, or None if valid."""
    public = keys.get(cp.key_id)
    if public is None:
        return "unknown_key", f"checkpoint signed by key {cp.key_id}, which is not trusted"
    try:
        public.verify(b64u_decode(cp.sig), cp.signed_bytes())
    except (InvalidSignature, ValueError):
        return "bad_signature", f"checkpoint signature by key {cp.key_id} does not verify"
    return None


def verify_checkpoint(cp: Checkpoint, keys: Iterable[Ed25519PublicKey] | KeyRing) -> None:
    """Raise ``ChainBroken`` unless ``cp`` is signed by one of ``keys``."""
    problem = signature_problem(cp, keyring(keys))
    if problem is not None:
        raise ChainBroken(problem[1], code=f"audit.checkpoint_{problem[0]}")


@dataclass(frozen=True)
class InclusionProof:
    """Proof that log line ``record`` is record ``seq`` under a signed checkpoint.

    ``record`` is the exact line text (without newline): the Merkle leaf is its bytes, so
    a holder of only the public key can check the record's content is in the log.
    """

    seq: int
    size: int
    record: str
    path: list[str]
    checkpoint: Checkpoint

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "size": self.size, "record": self.record,
                "path": list(self.path), "checkpoint": self.checkpoint.to_dict()}  # fmt: skip

    def to_json(self) -> bytes:
        return canonical(self.to_dict())


def parse_proof(data: bytes | str | Mapping[str, Any]) -> InclusionProof:
    obj: Any = data
    if isinstance(data, bytes | str):
        try:
            obj = json.loads(data)
        except (ValueError, RecursionError) as exc:
            raise BadRequest(f"proof is not JSON: {exc}", code="audit.bad_proof") from None
    if not isinstance(obj, Mapping) or set(obj) != {"seq", "size", "record", "path", "checkpoint"}:
        raise BadRequest("proof fields must be seq, size, record, path, checkpoint",
                         code="audit.bad_proof")  # fmt: skip
    path = obj["path"]
    ok = (
        type(obj["seq"]) is int and type(obj["size"]) is int and isinstance(obj["record"], str)
        and isinstance(path, list) and len(path) <= 64
        and all(isinstance(p, str) and _HEX64.match(p) for p in path)
    )  # fmt: skip
    if not ok:
        raise BadRequest("proof has a malformed field", code="audit.bad_proof")
    return InclusionProof(obj["seq"], obj["size"], obj["record"], list(path),
                          parse_checkpoint(obj["checkpoint"]))  # fmt: skip


def verify_proof(
    proof: InclusionProof, keys: Iterable[Ed25519PublicKey] | KeyRing
) -> dict[str, Any]:
    """The proven record (parsed) if ``proof`` holds; ``ChainBroken`` otherwise."""
    # Step P-1: the checkpoint is signed by a trusted key.
    verify_checkpoint(proof.checkpoint, keys)
    cp = proof.checkpoint
    # Step P-2: the proof is about this checkpoint's tree and the record claims its seq.
    try:
        record = json.loads(proof.record)
    except ValueError:
        raise ChainBroken("proof record is not JSON", code="audit.proof_invalid") from None
    if proof.size != cp.size or not isinstance(record, dict) or record.get("seq") != proof.seq:
        raise ChainBroken(
            "proof record, seq and checkpoint size disagree", code="audit.proof_invalid"
        )
    # Step P-3: leaf = SHA-256(0x00 || line bytes); path leads to the signed root.
    leaf = merkle.leaf_hash(proof.record.encode("utf-8"))
    path = [bytes.fromhex(p) for p in proof.path]
    if not merkle.verify_inclusion(
        proof.seq - 1, cp.size, leaf, path, bytes.fromhex(cp.merkle_root)
    ):
        raise ChainBroken(f"record {proof.seq} is not in the tree of checkpoint size {cp.size}",
                          code="audit.proof_invalid")  # fmt: skip
    return record
