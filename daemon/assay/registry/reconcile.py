"""Startup reconciliation of the database with the audit log.

The audit record of a mutation is made durable before the SQLite transaction that applies
it, and that transaction stores the record's seq in ``history.audit_seq``. Concurrent
requests commit out of seq order, so no high-water mark can say what was applied: a
durable seq N may lack its commit while N+1 has one. Instead every mutation record since
the last startup's reconcile (``reconciled_through``) is checked by its own seq and
re-applied (idempotently) if no change carries it, before the daemon serves. Records are
authenticated as they are read, so a forged line stops startup instead of being replayed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import trio

from assay.registry.db import Artifact
from assay.registry.service import Registry

log = logging.getLogger("assay.reconcile")

STATE_ACTIONS = {"artifact.promote", "artifact.revoke", "artifact.delete"}
#: Integrity changes: "failed" is recorded as a deny (serving blocked), so these are
#: picked by action, not by decision.
INTEGRITY_ACTIONS = {"artifact.integrity_failed": "failed", "artifact.integrity_restored": "ok"}


async def reconcile(
    registry: Registry, records_after: Callable[[int], Iterator[dict[str, Any]]]
) -> int:
    """Re-apply mutations the database missed; returns how many were applied."""
    start = await trio.to_thread.run_sync(registry.db.reconciled_through)
    pending = await trio.to_thread.run_sync(lambda: list(records_after(start)))
    mutations = [
        r
        for r in pending
        if (r.get("decision") == "allow" or r.get("action") in INTEGRITY_ACTIONS)
        and isinstance(r.get("target"), str)
        and str(r.get("action", "")).startswith("artifact.")
    ]
    # A record whose database change failed while the daemon ran was voided (the client
    # was told it failed): it must not be applied now.
    voided = {
        int(r["extra"]["voids_seq"])
        for r in pending
        if r.get("action") == "audit.void" and isinstance(r.get("extra", {}).get("voids_seq"), int)
    }
    mutations = [r for r in mutations if int(r["seq"]) not in voided]
    done = await trio.to_thread.run_sync(
        registry.db.applied_seqs, [int(r["seq"]) for r in mutations]
    )
    applied = 0
    for rec in mutations:
        if rec["seq"] in done:
            continue
        if await trio.to_thread.run_sync(_apply, registry, rec):
            applied += 1
    if pending:
        # Everything up to here is now applied; the next startup starts after it.
        await trio.to_thread.run_sync(registry.db.set_reconciled_through, pending[-1]["seq"])
    if applied:
        registry.artifacts = await trio.to_thread.run_sync(registry.db.load_all)
        log.warning("reconciled %d mutation(s) from the audit log after a crash", applied)
    return applied


def _apply(registry: Registry, rec: dict[str, Any]) -> bool:
    """Apply one record to the database if it is a mutation it does not reflect yet."""
    action, digest, seq = rec["action"], rec["target"], rec["seq"]
    current = registry.db.load_all().get(digest)
    if action == "artifact.ingest" and rec.get("from_state") is None and rec.get("to_state"):
        if current is not None:
            return False
        extra = rec.get("extra", {})
        art = Artifact(
            digest=digest,
            name=str(extra["name"]),
            size=int(extra["size"]),
            format=str(extra["format"]),
            format_details=json.loads(extra.get("format_details", "{}")),
            metadata=json.loads(extra.get("metadata", "{}")),
            state=str(rec["to_state"]),
            integrity="ok" if registry.store.exists(digest) else "failed",
            created_at=rec["ts"],
            updated_at=rec["ts"],
            uploaded_by=str(rec.get("principal") or ""),
            state_changed_at=rec["ts"],
        )
        registry.db.insert(art, seq)
        return True
    if current is None:
        return False
    if action in STATE_ACTIONS and current.state == rec.get("from_state"):
        if action == "artifact.promote" and rec.get("principal"):
            current = registry.db.add_approval(
                current, str(rec["principal"]), rec["ts"], None, _signatures(rec)
            )
        registry.db.set_state(
            current,
            str(rec["to_state"]),
            action=action.removeprefix("artifact."),
            principal=rec.get("principal"),
            reasons=list(rec.get("reasons", [])),
            ts=rec["ts"],
            seq=seq,
        )
        if rec["to_state"] == "deleted":
            registry.store.remove(digest)
        return True
    if action == "artifact.approve" and rec.get("principal") not in current.approvers:
        registry.db.add_approval(current, str(rec["principal"]), rec["ts"], seq, _signatures(rec))
        return True
    target_integrity = INTEGRITY_ACTIONS.get(action)
    if target_integrity is not None and current.integrity != target_integrity:
        registry.db.set_integrity(current, target_integrity, rec["ts"], seq, rec.get("principal"))
        return True
    return False


def _signatures(rec: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    raw = rec.get("extra", {}).get("signatures")
    if not isinstance(raw, str):
        return ()
    return tuple((str(k), str(v)) for k, v in json.loads(raw))
