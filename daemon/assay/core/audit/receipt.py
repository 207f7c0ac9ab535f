"""Receipts: the daemon's signed statement "your mutation is audit record ``seq``".

A receipt is ``{seq, record_hash, log_id, ts, action, target, checkpoint, key_id, sig}``
signed with the daemon's Ed25519 key over ``b"assay-receipt-v1\\x00" + canonical(body)``.
``checkpoint`` is the latest signed checkpoint when the receipt was issued (or null before
the first one), so the client also holds a signed commitment to the log before its record.

Why: a client that keeps receipts can later prove the daemon acknowledged an action; if
the log no longer contains a record with that ``seq`` and ``record_hash`` (or an inclusion
proof against a later checkpoint fails), the operator rewrote history. Holding only the
public key, a client can check a receipt but not forge one. ``action`` and ``target`` are
included because the client cannot check ``record_hash`` (it is keyed with a secret).

Forms: compact canonical JSON, and base64url of it (no padding) for the
``Assay-Receipt`` HTTP header. Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from assay.core.audit.chain import canonical
from assay.core.audit.checkpoint import (
    Checkpoint,
    KeyRing,
    b64u_decode,
    b64u_encode,
    key_id,
    keyring,
    parse_checkpoint,
    signature_problem,
)
from assay.core.errors import BadRequest, IntegrityError

RECEIPT_DOMAIN: Final = b"assay-receipt-v1\x00"
HEADER: Final = "Assay-Receipt"
#: A header value longer than this is refused before decoding (a checkpoint is ~300 bytes).
MAX_ENCODED: Final = 8192

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_FIELDS: Final = (
    "seq", "record_hash", "log_id", "ts", "action", "target", "checkpoint", "key_id", "sig",
)  # fmt: skip


class ReceiptInvalid(IntegrityError):
    """A receipt whose signature (or embedded checkpoint) does not verify.

    Defined here until it moves to ``assay.core.errors``.
    """

    code = "audit.receipt_invalid"
    status = 422
    title = "Receipt invalid"


@dataclass(frozen=True)
class Receipt:
    seq: int
    record_hash: str
    log_id: str
    ts: str
    action: str
    target: str | None
    checkpoint: Checkpoint | None
    key_id: str
    sig: str

    def body(self) -> dict[str, Any]:
        d = self.to_dict()
        del d["sig"]
        return d

    def signed_bytes(self) -> bytes:
        return RECEIPT_DOMAIN + canonical(self.body())

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "record_hash": self.record_hash, "log_id": self.log_id,
            "ts": self.ts, "action": self.action, "target": self.target,
            "checkpoint": self.checkpoint.to_dict() if self.checkpoint else None,
            "key_id": self.key_id, "sig": self.sig,
        }  # fmt: skip

    def to_json(self) -> bytes:
        return canonical(self.to_dict())

    def to_header(self) -> str:
        """base64url (no padding) of the compact JSON: safe in an HTTP header value."""
        return b64u_encode(self.to_json())


def make_receipt(
    private_key: Ed25519PrivateKey,
    record: Mapping[str, Any],
    checkpoint: Checkpoint | None,
    ts: str | None = None,
) -> Receipt:
    """Sign a receipt for a sealed, durable ``record`` (``ts`` defaults to the record's)."""
    unsigned = Receipt(
        seq=int(record["seq"]), record_hash=str(record["record_hash"]),
        log_id=str(record["log_id"]), ts=ts if ts is not None else str(record["ts"]),
        action=str(record["action"]), target=record.get("target"), checkpoint=checkpoint,
        key_id=key_id(private_key.public_key()), sig="",
    )  # fmt: skip
    sig = b64u_encode(private_key.sign(unsigned.signed_bytes()))
    return replace(unsigned, sig=sig)


def parse_receipt(data: str | bytes | Mapping[str, Any]) -> Receipt:
    """A receipt from its JSON, its base64url header form, or a dict (shape only)."""
    obj: Any = data
    if isinstance(data, bytes):
        data = data.decode("utf-8", errors="replace")
    if isinstance(data, str):
        text = data.strip()
        if len(text) > MAX_ENCODED * 2:
            raise BadRequest("receipt too long", code="audit.bad_receipt")
        try:
            obj = json.loads(text if text.startswith("{") else b64u_decode(text))
        except (ValueError, RecursionError) as exc:
            raise BadRequest(f"receipt is neither JSON nor base64url JSON: {exc}",
                             code="audit.bad_receipt") from None  # fmt: skip
    if not isinstance(obj, Mapping) or set(obj) != set(_FIELDS):
        raise BadRequest(
            f"receipt fields must be exactly {', '.join(_FIELDS)}", code="audit.bad_receipt"
        )
    ok = (
        type(obj["seq"]) is int and obj["seq"] >= 1
        and isinstance(obj["record_hash"], str) and _HEX64.match(obj["record_hash"]) is not None
        and all(isinstance(obj[k], str) for k in ("log_id", "ts", "action", "key_id", "sig"))
        and (obj["target"] is None or isinstance(obj["target"], str))
    )  # fmt: skip
    if not ok:
        raise BadRequest("receipt has a malformed field", code="audit.bad_receipt")
    cp = obj["checkpoint"]
    return Receipt(
        seq=obj["seq"], record_hash=obj["record_hash"], log_id=obj["log_id"], ts=obj["ts"],
        action=obj["action"], target=obj["target"],
        checkpoint=None if cp is None else parse_checkpoint(cp),
        key_id=obj["key_id"], sig=obj["sig"],
    )  # fmt: skip


def verify_receipt(
    receipt: Receipt | str | bytes | Mapping[str, Any],
    public_key: Ed25519PublicKey | Iterable[Ed25519PublicKey] | KeyRing,
) -> Receipt:
    """The parsed receipt if it and its checkpoint verify; ``ReceiptInvalid`` otherwise."""
    r = receipt if isinstance(receipt, Receipt) else parse_receipt(receipt)
    keys = keyring([public_key] if isinstance(public_key, Ed25519PublicKey) else public_key)
    # Step R-1: the signing key is one the verifier trusts.
    public = keys.get(r.key_id)
    if public is None:
        raise ReceiptInvalid(f"receipt signed by key {r.key_id}, which is not trusted",
                             code="audit.receipt_unknown_key")  # fmt: skip
    # Step R-2: the signature covers every field but ``sig``.
    try:
        public.verify(b64u_decode(r.sig), r.signed_bytes())
    except (InvalidSignature, ValueError):
        raise ReceiptInvalid(f"receipt signature by key {r.key_id} does not verify") from None
    # Step R-3: the embedded checkpoint verifies on its own and names the same log.
    if r.checkpoint is not None:
        problem = signature_problem(r.checkpoint, keys)
        if problem is not None:
            raise ReceiptInvalid(f"embedded {problem[1]}", code=f"audit.checkpoint_{problem[0]}")
        if r.checkpoint.log_id != r.log_id:
            raise ReceiptInvalid("embedded checkpoint is for another log")
    return r
