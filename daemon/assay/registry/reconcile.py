"""Startup reconciliation of the database with the audit log (the I/O around ``replay``).

The audit record of a mutation is made durable before the SQLite transaction that applies
it, and that transaction stores the record's seq in ``history.audit_seq``. Concurrent
requests commit out of seq order, so no high-water mark of *commits* can say what was
applied. Instead the daemon keeps a replay mark (``kv.reconciled_through``): the seq up to
which every mutation record is settled. It moves while the daemon runs (``InFlight`` in
``replay.py``, saved every second and at shutdown) and after each startup's replay.

With the mark it saves the position where the record at the mark ends (its anchor), so
startup reads from there and not from the start of the segment; a log that no longer
holds that record (replaced or cut) is read from its first record instead.

At startup, the records after the mark are streamed, authenticated as they are read (a
forged line stops startup instead of being replayed), and only mutation records are
kept: reads, however many, cost one HMAC check each and are never applied. Each mutation
that no change carries yet is applied from its own row, so the cost follows the number
of unreconciled mutations, not the traffic times the artifacts. Memory holds only the
mutations.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import trio

from assay.core.audit.reader import Position
from assay.registry.db import RegistryDB
from assay.registry.model import ArtifactTable
from assay.registry.replay import (
    Approve,
    Change,
    Insert,
    SetIntegrity,
    SetState,
    change_for,
    is_mutation,
    voided_seq,
)
from assay.registry.service import Registry
from assay.registry.store import ObjectStore

log = logging.getLogger("assay.reconcile")

#: Records between progress reports (and durable mark moves while nothing is pending).
PROGRESS_EVERY = 50_000
#: Seqs per ``applied_seqs`` query (SQLite's bound on parameters is 32,766).
SEQ_CHUNK = 500

#: Changes applied per transaction (one fsync each, not one per change).
APPLY_CHUNK = 1000

Progress = Callable[[int, int], None]
#: Authenticated records after a seq, reading from the saved anchor when it holds.
RecordsAfter = Callable[[int, Position | None], Iterator[dict[str, Any]]]


@dataclass(frozen=True)
class ReplayReport:
    scanned: int  # records read after the mark
    mutations: int  # of which could change a row
    applied: int  # of which the database lacked and were applied
    mark: int  # the mark afterwards


async def reconcile(
    registry: Registry,
    records_after: RecordsAfter,
    *,
    progress: Progress | None = None,
) -> ReplayReport:
    """Re-apply mutations the database missed, then move the mark past what was read."""
    report = await trio.to_thread.run_sync(
        _reconcile_blocking, registry.db, registry.store, records_after, progress
    )
    if report.applied:
        registry.artifacts = ArtifactTable(await trio.to_thread.run_sync(registry.db.load_all))
        log.warning("reconciled %d mutation(s) from the audit log after a crash", report.applied)
    await trio.to_thread.run_sync(_drop_deleted_bytes, registry)
    registry.replay_mark = report.mark
    registry.last_replay = dataclasses.asdict(report)
    return report


def _drop_deleted_bytes(registry: Registry) -> None:
    """A kill between a delete's commit and the removal of its bytes leaves them on
    disk; the row says deleted, so they go now (one stat per deleted artifact)."""
    for art in registry.artifacts.values():
        if art.state == "deleted" and os.path.lexists(registry.store.path_for(art.digest)):
            log.warning("removing the bytes of deleted %s left by an interrupted delete",
                        art.digest)  # fmt: skip
            registry.store.remove(art.digest)


def _reconcile_blocking(
    db: RegistryDB,
    store: ObjectStore,
    records_after: RecordsAfter,
    progress: Progress | None,
) -> ReplayReport:
    start, anchor = db.reconciled_through()
    mutations: list[dict[str, Any]] = []
    voided: set[int] = set()
    scanned, last = 0, start
    for rec in records_after(start, Position.from_json(anchor) if anchor else None):
        scanned, last = scanned + 1, int(rec["seq"])
        if is_mutation(rec):
            mutations.append(rec)
        elif (seq := voided_seq(rec)) is not None:
            voided.add(seq)
        if scanned % PROGRESS_EVERY == 0:
            if not mutations:  # nothing pending before here: a cut-off start keeps this
                db.set_reconciled_through(last)
            if progress is not None:
                progress(scanned, len(mutations))
    # A record whose database change failed while the daemon ran was voided (the client
    # was told it failed): it must not be applied now.
    todo = [r for r in mutations if int(r["seq"]) not in voided]
    done: set[int] = set()
    for i in range(0, len(todo), SEQ_CHUNK):
        done |= db.applied_seqs([int(r["seq"]) for r in todo[i : i + SEQ_CHUNK]])
    applied = 0
    pending = [r for r in todo if int(r["seq"]) not in done]
    for i in range(0, len(pending), APPLY_CHUNK):
        removed: list[str] = []
        with db.batch():
            for rec in pending[i : i + APPLY_CHUNK]:
                change = change_for(rec, db.get(str(rec["target"])), store.exists)
                if change is not None:
                    _apply(db, rec, change)
                    applied += 1
                    if isinstance(change, SetState) and change.remove_bytes:
                        removed.append(str(rec["target"]))
        for digest in removed:  # only once the deletion is committed
            store.remove(digest)
    if last > start:
        db.set_reconciled_through(last)
    return ReplayReport(scanned=scanned, mutations=len(mutations), applied=applied, mark=last)


def _apply(db: RegistryDB, rec: dict[str, Any], change: Change) -> None:
    """Make ``change`` in the database, carrying the record's seq like the live path."""
    digest, seq, ts = str(rec["target"]), int(rec["seq"]), str(rec["ts"])
    if isinstance(change, Insert):
        db.insert(change.artifact, seq)
        return
    current = db.get(digest)
    assert current is not None  # change_for saw the row; nothing deletes rows
    if isinstance(change, SetState):
        if change.approval is not None and change.approval[0] not in current.approvers:
            principal, signatures = change.approval
            current = db.add_approval(current, principal, ts, None, signatures)
        db.set_state(current, change.to_state, action=change.action,
                     principal=change.principal, reasons=list(change.reasons), ts=ts,
                     seq=seq)  # fmt: skip
    elif isinstance(change, Approve):
        db.add_approval(current, change.principal, ts, seq, change.signatures)
    elif isinstance(change, SetIntegrity):
        db.set_integrity(current, change.integrity, ts, seq, change.principal)
