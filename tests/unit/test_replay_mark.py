"""The replay mark moves while the daemon runs, and never past a change that may be lost.

Real registry service and SQLite database; the audit log is a fake that assigns seqs in
memory (and can fail on request), so every path of the mutation protocol is reached.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from assay.core.errors import AuditWriteFailed, StorageError
from assay.core.tokens import Principal
from assay.registry import policy as policy_mod
from assay.registry.db import RegistryDB
from assay.registry.model import Artifact
from assay.registry.service import Registry
from assay.registry.states import Action
from assay.registry.store import ObjectStore

ADMIN = Principal("admin", frozenset({"artifacts:revoke"}))


class FakeLog:
    """Seqs in order; ``fail`` names actions whose append raises ``AuditWriteFailed``."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.fail: set[str] = set()
        self.uncertain = False

    @property
    def head(self) -> int:
        return len(self.records)

    async def append(self, fields: dict[str, Any]) -> dict[str, Any]:
        if fields["action"] in self.fail:
            raise AuditWriteFailed("injected")
        rec = {**fields, "seq": self.head + 1}
        self.records.append(rec)
        return rec


class FlakyDB(RegistryDB):
    refuse = False

    def set_state(self, art: Artifact, to_state: str, **kw: Any) -> Artifact:
        if self.refuse:
            raise StorageError("injected: database refused")
        return super().set_state(art, to_state, **kw)


def make(tmp: Path) -> tuple[Registry, FakeLog, FlakyDB]:
    log = FakeLog()
    db = FlakyDB(tmp / "r.db")
    reg = Registry(store=ObjectStore(tmp / "store"), db=db, policy=policy_mod.Policy(name="t"),
                   audit_append=log.append, max_artifact_bytes=1024,
                   audit_head=lambda: log.head, audit_uncertain=lambda: log.uncertain)  # fmt: skip
    reg.open_blocking()
    for i in range(3):
        art = Artifact(digest=f"sha256:{i + 1:064x}", name=f"m/{i}", size=1, format="gguf",
                       format_details={}, metadata={}, state="quarantined", integrity="ok",
                       created_at="2026-01-01T00:00:00.000Z", updated_at="2026-01-01T00:00:00.000Z",
                       uploaded_by="u", state_changed_at="2026-01-01T00:00:00.000Z")  # fmt: skip
        db.insert(art, None)
        reg.artifacts[art.digest] = art
    return reg, log, db


async def revoke(reg: Registry, i: int) -> Any:
    return await reg.transition(ADMIN, f"sha256:{i + 1:064x}", Action.REVOKE,
                                route="r", request_id="q", reason="test")  # fmt: skip


async def test_mark_reaches_the_head_after_settled_mutations_and_reads(tmp_path: Path) -> None:
    reg, log, db = make(tmp_path)
    await revoke(reg, 0)
    log.records.append({"action": "artifact.resolve", "seq": log.head + 1})  # a read
    assert await reg.save_replay_mark() == log.head == 2
    assert db.reconciled_through() == (2, None)


async def test_voided_change_does_not_pin_the_mark(tmp_path: Path) -> None:
    reg, log, db = make(tmp_path)
    db.refuse = True
    with pytest.raises(StorageError):
        await revoke(reg, 0)
    assert [r["action"] for r in log.records] == ["artifact.revoke", "audit.void"]
    assert await reg.save_replay_mark() == 2


async def test_a_change_neither_applied_nor_voided_pins_the_mark_below_it(
    tmp_path: Path,
) -> None:
    """The record is durable, the database refused, the void could not be written: the
    next start must replay it, so no saved mark may cover it, however much follows."""
    reg, log, db = make(tmp_path)
    await revoke(reg, 0)  # seq 1, settled
    db.refuse = True
    log.fail = {"audit.void"}
    with pytest.raises(StorageError):
        await revoke(reg, 1)  # seq 2, stranded
    db.refuse, log.fail = False, set()
    await revoke(reg, 2)  # seq 3, settled
    assert await reg.save_replay_mark() == 1
    assert db.reconciled_through() == (1, None)


async def test_an_unknown_audit_outcome_pins_the_mark_and_a_clean_failure_does_not(
    tmp_path: Path,
) -> None:
    reg, log, _db = make(tmp_path)
    log.fail = {"artifact.revoke"}
    with pytest.raises(AuditWriteFailed):
        await revoke(reg, 0)  # a failed write, cut off again: nothing on disk
    log.records.append({"action": "http.request", "seq": log.head + 1})
    assert await reg.save_replay_mark() == 1
    log.uncertain = True  # fsync failed: the record may be durable
    with pytest.raises(AuditWriteFailed):
        await revoke(reg, 1)
    log.records.append({"action": "http.request", "seq": log.head + 1})
    assert await reg.save_replay_mark() == 1


async def test_a_saved_mark_carries_an_anchor_so_a_restart_reads_only_past_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real log and writer, no signing key (so no checkpoint to start from): the
    mark is saved with the head's position, and the next start authenticates only the
    records after it, however long the segment."""
    import trio

    from assay.core.audit import reader
    from assay.core.audit.verify import StreamVerifier
    from assay.core.audit.writer import AuditWriter
    from assay.registry.reconcile import reconcile
    from tests.unit.audit_util import fields as read_fields
    from tests.unit.audit_util import open_log

    audit = open_log(tmp_path / "audit")
    writer = AuditWriter(audit, checkpoint_every_seconds=None)
    reg, _log, db = make(tmp_path)
    reg._append = writer.append
    reg._audit_head = lambda: writer.head_seq
    reg._audit_position = audit.head_position
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for i in range(500):  # ordinary traffic
            await writer.append(read_fields(i))
        await revoke(reg, 0)
        await reg.save_replay_mark()
        await writer.append(read_fields(9999))  # after the last saved mark
        await writer.close()
    mark, anchor = db.reconciled_through()
    assert mark == 501 and anchor is not None and json.loads(anchor)[0] == 501

    lines = [0]

    class Counting(StreamVerifier):
        def check_line(self, line: bytes, torn: bool = False) -> dict[str, Any] | None:
            lines[0] += 1
            return super().check_line(line, torn)

    monkeypatch.setattr(reader, "StreamVerifier", Counting)
    with open_log(tmp_path / "audit") as log:
        report = await reconcile(reg, lambda seq, a: log.records_after(seq, anchor=a))
    assert report.scanned == 1 and lines[0] == 1
