"""Shared helpers for the audit tests: real logs written by ``AuditLog``, read back as bytes."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from assay.core.audit import files
from assay.core.audit.chain import Chain, canonical
from assay.core.audit.checkpoint import Checkpoint
from assay.core.audit.log import AuditLog
from assay.core.audit.schema import make_fields
from assay.core.audit.verify import VerifyReport, verify_stream

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
TS = "2026-01-02T03:04:05.678Z"
SIGNING = Ed25519PrivateKey.from_private_bytes(bytes(range(100, 132)))


def no_fsync(_fd: int) -> None:
    """Unit tests do not need the disk to be durable, only correct."""


def fields(i: int = 0, **kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "action": "artifact.promote", "auth_mode": "token", "principal": f"user-{i % 3}",
        "request_id": f"req-{i:04d}", "route": "POST /v1/artifacts/<digest>/promote",
        "target": f"sha256:{i:064x}", "from_state": "quarantined", "to_state": "trusted",
        "reasons": ["policy ok"], "status": 200, "extra": {"n": i, "note": "é✓"},
    }  # fmt: skip
    base.update(kw)
    action = base.pop("action")
    return make_fields(action, **base)


def open_log(directory: Path, **kw: Any) -> AuditLog:
    kw.setdefault("fsync", no_fsync)
    kw.setdefault("clock", lambda: TS)
    return AuditLog(directory, KEY, **kw)


def write_log(
    directory: Path, n: int, *, rotate_bytes: int = 10**9, batch: int = 1, **kw: Any
) -> list[dict[str, Any]]:
    """Append ``n`` records (in batches of ``batch``); the sealed records."""
    out: list[dict[str, Any]] = []
    with open_log(directory, rotate_bytes=rotate_bytes, **kw) as log:
        i = 0
        while i < n:
            k = min(batch, n - i)
            out += log.append_batch([fields(i + j) for j in range(k)])
            i += k
    return out


def read_files(directory: Path) -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in files.segment_paths(directory)]


def write_files(directory: Path, contents: Sequence[tuple[str, bytes]]) -> None:
    for name, data in contents:
        (directory / name).write_bytes(data)


def verify_bytes(
    contents: Sequence[tuple[str, bytes]],
    key: bytes | None = KEY,
    checkpoint: Checkpoint | Sequence[Checkpoint] | None = None,
    public_keys: Sequence[Any] = (SIGNING.public_key(),),
    chunk: int | None = None,
) -> VerifyReport:
    def chunks(data: bytes) -> list[bytes]:
        if chunk is None:
            return [data]
        return [data[i : i + chunk] for i in range(0, len(data), chunk)]

    return verify_stream(
        [(name, chunks(data)) for name, data in contents], key, checkpoint, public_keys
    )


def forge_line(record: dict[str, Any], key: bytes = KEY) -> bytes:
    """Seal ``record`` (minus ``record_hash``) with ``key`` *without* schema checks."""
    body = {k: v for k, v in record.items() if k != "record_hash"}
    data = canonical(body)
    mac = Chain(key).mac(data)
    return data[:-1] + b',"record_hash":"' + mac.encode() + b'"}'


def lines_of(data: bytes) -> list[bytes]:
    return data.split(b"\n")[:-1]


def record_at(data: bytes, index: int) -> dict[str, Any]:
    rec: dict[str, Any] = json.loads(lines_of(data)[index])
    return rec
