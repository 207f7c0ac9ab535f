"""The tamper-evident audit core shared by the registry and the relay.

Pure core (bytes and values in, no I/O): ``schema`` (record v1), ``chain`` (canonical
JSON, HMAC chain, redaction), ``verify`` (streaming verifier), ``merkle`` (RFC 6962
trees and proofs), ``checkpoint`` (signed checkpoints, inclusion proofs) and ``receipt``
(signed receipts). Edge: ``keys`` (key files), ``files``/``reader`` (directory layout and
reads), ``log.AuditLog`` (sync, blocking) and ``writer.AuditWriter`` (trio, group commit).

This package imports only the pure modules, so ``import assay.core.audit`` stays cheap
and I/O-free; import ``assay.core.audit.log`` / ``.writer`` where files are written.
See ``docs/audit-schema.md``.
"""

from __future__ import annotations

from assay.core.audit.chain import GENESIS, canonical, redact, seal
from assay.core.audit.checkpoint import Checkpoint, InclusionProof, verify_checkpoint, verify_proof
from assay.core.audit.receipt import HEADER as RECEIPT_HEADER
from assay.core.audit.receipt import Receipt, ReceiptInvalid, make_receipt, verify_receipt
from assay.core.audit.schema import SCHEMA_VERSION, check_fields, make_fields
from assay.core.audit.verify import Break, VerifyReport, verify_stream

__all__ = [
    "GENESIS",
    "RECEIPT_HEADER",
    "SCHEMA_VERSION",
    "Break",
    "Checkpoint",
    "InclusionProof",
    "Receipt",
    "ReceiptInvalid",
    "VerifyReport",
    "canonical",
    "check_fields",
    "make_fields",
    "make_receipt",
    "redact",
    "seal",
    "verify_checkpoint",
    "verify_proof",
    "verify_receipt",
    "verify_stream",
]
