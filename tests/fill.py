"""Fill a stopped deployment with N artifacts and M audit records, fast.

Why not over HTTP: a day of reads is millions of records, and the restart benchmark and
tests need that volume in seconds. The fill uses the daemon's own modules (config, object
store, database, audit log) so what it leaves is exactly what a daemon that served that
traffic would leave: objects, rows that carry their records' seqs, and HMAC-chained
records of the shapes the web edge writes. Only durability is relaxed (no per-row fsync),
which changes nothing a restart reads.

Used by ``benchmarks/bench_restart.py``, the reconcile tests and the booted restart test.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from assay.core.audit.runtime import open_log
from assay.core.audit.schema import make_fields
from assay.registry.config import load_config
from assay.registry.db import Artifact, RegistryDB
from assay.registry.store import ObjectStore

BATCH = 5000


@dataclass
class Filled:
    digests: list[str]
    head_seq: int


def tiny_safetensors(i: int, payload: int = 256) -> bytes:
    """A valid safetensors file, unique per ``i`` (a U8 tensor of ``payload`` bytes)."""
    header = {"t": {"dtype": "U8", "shape": [payload], "data_offsets": [0, payload]}}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    body = (i.to_bytes(8, "little") * (payload // 8 + 1))[:payload]
    return struct.pack("<Q", len(raw)) + raw + body


def _read_record(i: int, digests: list[str], names: list[str]) -> dict[str, Any]:
    """One of the read records ordinary authenticated traffic leaves, by turns."""
    d = digests[i % len(digests)] if digests else None
    kind = i % 4
    common = {"auth_mode": "token", "principal": "reader", "request_id": f"{i:016x}",
              "status": 200}  # fmt: skip
    if kind == 0:
        return make_fields("artifact.resolve", route="GET /v1/trusted/<path:name>",
                           target=d, **common)  # fmt: skip
    if kind == 1:
        return make_fields("http.request", route="GET /v1/artifacts/<digest>", target=d,
                           **common)  # fmt: skip
    if kind == 2:
        return make_fields("artifact.fetch", route="GET /v1/artifacts/<digest>/content",
                           target=d, **common)  # fmt: skip
    return make_fields("artifact.verify", route="POST /v1/artifacts/<digest>/verify",
                       target=d, **common)  # fmt: skip


def _batches(n: int) -> Iterator[range]:
    for start in range(0, n, BATCH):
        yield range(start, min(n, start + BATCH))


def fill(
    config: Path,
    *,
    artifacts: int,
    reads: int,
    trusted: bool = True,
    unreconciled: int = 0,
    mark_reconciled: bool = True,
) -> Filled:
    """Add ``artifacts`` (trusted unless told otherwise) and ``reads`` read records.

    ``mark_reconciled``: leave the reconcile mark at the head, as a daemon that served
    this traffic and stopped cleanly would. ``unreconciled``: then append that many
    promote records of quarantined artifacts whose database change never happened, as
    a ``kill -9`` between record and commit leaves them (needs ``trusted=False``).
    """
    loaded = load_config(config)
    cfg = loaded.config
    store = ObjectStore(loaded.path(cfg.registry.store_dir))
    store.open()
    db = RegistryDB(loaded.path(cfg.registry.db_path))
    db.open()
    assert db._conn is not None
    db._conn.execute("PRAGMA synchronous=OFF")  # a fill, not a durability test
    log = open_log(cfg.audit, base=loaded.base)
    digests: list[str] = []
    names: list[str] = []
    try:
        for batch in _batches(artifacts):
            arts: list[Artifact] = []
            fields: list[dict[str, Any]] = []
            for i in batch:
                data = tiny_safetensors(i)
                digest = "sha256:" + hashlib.sha256(data).hexdigest()
                path = store.path_for(digest)
                path.write_bytes(data)
                art = Artifact(
                    digest=digest, name=f"fill/m{i}", size=len(data), format="safetensors",
                    format_details={"tensors": 1}, metadata={"source": "fill"},
                    state="trusted" if trusted else "quarantined", integrity="ok",
                    created_at=f"2026-01-01T00:00:00.{i % 1000:03d}Z",
                    updated_at="2026-01-01T00:00:00.000Z", uploaded_by="fill",
                    state_changed_at="2026-01-01T00:00:00.000Z",
                )  # fmt: skip
                arts.append(art)
                fields.append(make_fields(
                    "artifact.ingest", auth_mode="token", principal="fill",
                    route="POST /v1/artifacts", target=digest, to_state=art.state, status=201,
                    extra={"name": art.name, "size": art.size, "format": art.format,
                           "metadata": json.dumps(art.metadata),
                           "format_details": json.dumps(art.format_details)},
                ))  # fmt: skip
            records = log.append_batch(fields)
            for art, rec in zip(arts, records, strict=True):
                db.insert(art, int(rec["seq"]))
                digests.append(art.digest)
                names.append(art.name)
        for batch in _batches(reads):
            log.append_batch([_read_record(i, digests, names) for i in batch])
        if mark_reconciled:
            db.set_reconciled_through(log.head_seq)
        for batch in _batches(min(unreconciled, len(digests))):
            log.append_batch([
                make_fields(
                    "artifact.promote", auth_mode="token", principal="admin",
                    route="POST /v1/artifacts/<digest>/promote", target=digests[i],
                    from_state="quarantined", to_state="trusted", status=200,
                )
                for i in batch
            ])  # fmt: skip
        return Filled(digests=digests, head_seq=log.head_seq)
    finally:
        log.close()
        db.close()
