"""Attacks on the in-run replay mark and the mutation protocol (review14).

The guarantee under attack: every acknowledged mutation survives a kill -9, and no
record claims a change the registry does not show. Each test drives the real
``Registry`` over a real SQLite database and then asks one auditor
(``unreflected``): which durable mutation records, not voided by a durable void, does
the database not carry? "After a kill -9" is simulated faithfully: the committed
database is copied with SQLite's backup API (only committed pages survive a kill) and
a fresh registry on the copy runs the real startup replay over the durable records.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from assay.core.audit.writer import AuditWriter
from assay.core.errors import StorageError
from assay.core.tokens import Principal
from assay.formats.inspect import Inspection
from assay.registry import policy as policy_mod
from assay.registry.db import RegistryDB
from assay.registry.errors import NotTrusted, StateConflict
from assay.registry.model import Artifact
from assay.registry.reconcile import reconcile
from assay.registry.replay import is_mutation, voided_seq
from assay.registry.service import Registry
from assay.registry.states import Action
from assay.registry.store import ObjectStore
from tests.conftest import SAMPLES
from tests.unit.audit_util import open_log

ADMIN = Principal("admin", frozenset({"artifacts:revoke", "artifacts:promote"}))
TS = "2026-01-01T00:00:00.000Z"


# -- the auditor -----------------------------------------------------------------------


def unreflected(records: list[dict[str, Any]], db: RegistryDB) -> list[int]:
    """Seqs of durable, non-voided records that claim a change ``db`` does not carry.

    Every live change and every replayed change stores its record's seq in
    ``history.audit_seq``; a duplicate upload (``from_state`` set) claims no change.
    """
    voided = {s for r in records if (s := voided_seq(r)) is not None}
    claims = [
        int(r["seq"])
        for r in records
        if is_mutation(r)
        and int(r["seq"]) not in voided
        and not (r["action"] == "artifact.ingest" and r.get("from_state") is not None)
    ]
    return sorted(set(claims) - db.applied_seqs(claims))


def kill9_and_restart(
    tmp: Path, db: RegistryDB, store: ObjectStore, records: list[dict[str, Any]]
) -> Registry:
    """The committed database as a kill -9 leaves it, then the real startup replay."""
    copy = tmp / f"after-kill-{len(list(tmp.glob('after-kill-*')))}.db"
    src, dst = sqlite3.connect(db.path), sqlite3.connect(copy)
    src.backup(dst)  # a second connection: committed pages only, as a kill leaves them
    src.close()
    dst.close()

    async def no_append(fields: dict[str, Any]) -> dict[str, Any]:
        raise AssertionError("replay must not append")

    reg = Registry(store=store, db=RegistryDB(copy), policy=policy_mod.Policy(name="t"),
                   audit_append=no_append, max_artifact_bytes=1 << 20)  # fmt: skip
    reg.open_blocking()

    def records_after(seq: int, anchor: Any = None) -> Iterator[dict[str, Any]]:
        return (r for r in records if r["seq"] > seq)

    trio.run(lambda: reconcile(reg, records_after))
    return reg


def row(i: int, state: str = "quarantined") -> Artifact:
    return Artifact(digest=f"sha256:{i:064x}", name=f"m/{i}", size=1, format="gguf",
                    format_details={}, metadata={}, state=state, integrity="ok",
                    created_at=TS, updated_at=TS, uploaded_by="u",
                    state_changed_at=TS)  # fmt: skip


# -- attack 1: a void "written" under availability_first ----------------------------------


class DiskFull:
    """The audit log's ``write``: fails with ENOSPC while ``full`` (the writer cuts the
    partial line off again, so nothing of that batch is on disk)."""

    def __init__(self) -> None:
        self.full = False

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)


class FillingDB(RegistryDB):
    """SQLite refusing a state change because the disk just filled up (which the audit
    log's next write then meets too)."""

    disk: DiskFull | None = None

    def set_state(self, art: Artifact, to_state: str, **kw: Any) -> Artifact:
        if self.disk is not None:
            self.disk.full = True
            raise StorageError("injected: database or disk is full")
        return super().set_state(art, to_state, **kw)


def test_a_void_dropped_under_availability_first_does_not_let_the_mark_pass_its_record(
    tmp_path: Path,
) -> None:
    """Real AuditWriter under ``availability_first``. The revoke's record is durable,
    then the disk fills: SQLite refuses the change and the void's write fails too, so
    the writer *returns* a dropped record (seq None) instead of raising. ``_commit``
    still sets ``mutation.voided``, the mutation closes, and the mark moves past a record
    that claims a revoke no row shows and no void cancels. Before this change the next
    start replayed it (from the last startup's mark); now it sits below the mark for good
    and the artifact stays trusted."""
    disk = DiskFull()
    audit = open_log(tmp_path / "audit", write=disk.write)
    writer = AuditWriter(audit, write_policy="availability_first",
                         checkpoint_every_seconds=None)  # fmt: skip
    store = ObjectStore(tmp_path / "store")
    db = FillingDB(tmp_path / "r.db")
    reg = Registry(store=store, db=db, policy=policy_mod.Policy(name="t"),
                   audit_append=writer.append, max_artifact_bytes=1024,
                   audit_head=lambda: writer.head_seq,
                   audit_uncertain=lambda: audit.poisoned is not None)  # fmt: skip
    reg.open_blocking()
    art = row(1, "trusted")
    db.insert(art, None)
    reg.artifacts[art.digest] = art

    async def run() -> list[dict[str, Any]]:
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            db.disk = disk
            with pytest.raises(StorageError):
                await reg.transition(ADMIN, art.digest, Action.REVOKE, route="r",
                                     request_id="q", reason="compromised")  # fmt: skip
            assert writer.dropped == 1  # the void
            disk.full, db.disk = False, None  # space freed; the log writes again
            await reg.save_replay_mark()
            recs = [dict(r) for r in await trio.to_thread.run_sync(
                lambda: list(audit.records_after(0)))]  # fmt: skip
            await writer.close()
        return recs

    records = trio.run(run)
    assert [r["action"] for r in records] == ["artifact.revoke"]  # no void on disk
    after = kill9_and_restart(tmp_path, db, store, records)
    assert unreflected(records, after.db) == [], (
        f"mark saved at {db.reconciled_through()[0]}: the revoke at seq 1 is claimed by the "
        f"log, voided nowhere, and never replayed; the artifact stays "
        f"{after.get(art.digest).state}"
    )


# -- attack 2: the client goes away while its record is being made durable ---------------


class BytesBody:
    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    async def readinto(self, view: memoryview) -> int:
        n = min(len(view), len(self._data))
        view[:n] = self._data[:n]
        self._data = self._data[n:]
        return n


class Disconnect:
    """An fsync that, while armed, cancels the request's scope from the writer's worker
    thread: exactly what quart-trio does when the client's connection closes while the
    handler waits on the (shielded) audit append."""

    def __init__(self) -> None:
        self.scope: trio.CancelScope | None = None

    def fsync(self, _fd: int) -> None:
        if self.scope is not None:
            scope, self.scope = self.scope, None
            trio.from_thread.run_sync(scope.cancel)


async def _with_real_writer(
    tmp: Path, body: Any, db: RegistryDB | None = None
) -> list[dict[str, Any]]:
    """Run ``body(registry, db, store, disconnect)`` against the real AuditLog and
    AuditWriter (group commit in a worker thread); returns the durable records."""
    disconnect = Disconnect()
    audit = open_log(tmp / "audit", fsync=disconnect.fsync)
    writer = AuditWriter(audit, checkpoint_every_seconds=None)
    store = ObjectStore(tmp / "store")
    db = db or RegistryDB(tmp / "r.db")
    reg = Registry(store=store, db=db, policy=policy_mod.Policy(name="t"),
                   audit_append=writer.append, max_artifact_bytes=1 << 20,
                   audit_head=lambda: writer.head_seq,
                   audit_uncertain=lambda: audit.poisoned is not None)  # fmt: skip
    await trio.to_thread.run_sync(reg.open_blocking)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await body(reg, db, store, disconnect)
        records = [dict(r) for r in await trio.to_thread.run_sync(
            lambda: list(audit.records_after(0)))]  # fmt: skip
        await writer.close()
    return records


async def _ingest_sample(reg: Registry) -> str:
    data = (SAMPLES / "sample.safetensors").read_bytes()
    out = await reg.ingest(ADMIN, name="m/sample", metadata={}, declared=None,
                           body=BytesBody(data), route="r", request_id="up")  # fmt: skip
    return out.artifact.digest


async def _revoke_and_disconnect(reg: Registry, digest: str, disconnect: Disconnect) -> None:
    with trio.CancelScope() as scope:
        disconnect.scope = scope
        await reg.transition(ADMIN, digest, Action.REVOKE, route="r", request_id="rv",
                             reason="compromised")  # fmt: skip
    assert scope.cancel_called, "the disconnect did not happen during the append"


def test_a_revoke_whose_client_disconnects_after_its_record_is_durable_still_revokes(
    tmp_path: Path,
) -> None:
    """Append is shielded, so the cancel lands at the next checkpoint: the DB limiter in
    ``_commit``'s ``trio.to_thread.run_sync``. Not a StorageError, so no void: the log
    holds an allowed, durable artifact.revoke while the running registry keeps the
    artifact trusted and serves it until some restart replays the record."""
    state: dict[str, Any] = {}

    async def body(reg: Registry, db: RegistryDB, store: ObjectStore, d: Disconnect) -> None:
        digest = await _ingest_sample(reg)
        await reg.transition(ADMIN, digest, Action.PROMOTE, route="r", request_id="p")
        assert reg.get(digest).state == "trusted"
        await _revoke_and_disconnect(reg, digest, d)
        state.update(digest=digest, db=db, mark=await reg.save_replay_mark())
        try:
            reg.check_consumable(digest)
            state["served"] = True
        except NotTrusted:
            state["served"] = False

    records = trio.run(_with_real_writer, tmp_path, body)
    revokes = [r for r in records if r["action"] == "artifact.revoke"]
    assert revokes and revokes[0]["decision"] == "allow"
    assert unreflected(records, state["db"]) == [] and not state["served"], (
        f"seq {revokes[0]['seq']} (artifact.revoke, allow) is durable and not voided, yet "
        f"the running registry still serves {state['digest']} as trusted; mark pinned at "
        f"{state['mark']}"
    )


def test_a_stranded_revoke_is_lost_for_good_once_the_artifact_moves_on(tmp_path: Path) -> None:
    """The same disconnect on a quarantined artifact. The operator sees it still
    quarantined and promotes it. At the next start (even after a kill -9) replay finds
    the revoke's from_state no longer matching and skips it: the log says revoked, with
    no void, and the registry serves the artifact as trusted forever."""
    state: dict[str, Any] = {}

    async def body(reg: Registry, db: RegistryDB, store: ObjectStore, d: Disconnect) -> None:
        digest = await _ingest_sample(reg)
        await _revoke_and_disconnect(reg, digest, d)
        with contextlib.suppress(StateConflict):  # refused once the revoke took effect
            await reg.transition(ADMIN, digest, Action.PROMOTE, route="r", request_id="p")
        state.update(digest=digest, db=db, store=store)

    records = trio.run(_with_real_writer, tmp_path, body)
    after = kill9_and_restart(tmp_path, state["db"], state["store"], records)
    served = after.get(state["digest"]).state == "trusted"
    assert unreflected(records, after.db) == [] and not served, (
        f"after restart {state['digest']} is {after.get(state['digest']).state}; the log's "
        f"revoke seqs {unreflected(records, after.db)} are applied nowhere"
    )


# -- attack 3: listing while an upload is between its record and its row -----------------


class GatedLog:
    """Seqs in order; the append of ``gate_target`` waits until ``release`` is set."""

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []
        self.gate_target: str | None = None
        self.release = trio.Event()

    async def append(self, fields: dict[str, Any]) -> dict[str, Any]:
        if fields["target"] == self.gate_target:
            await self.release.wait()
        rec = {**fields, "seq": len(self.records) + 1, "ts": TS}
        self.records.append(rec)
        return rec


def test_a_listing_that_pages_while_an_upload_commits_never_sees_it(tmp_path: Path) -> None:
    """``created_at`` (the listing key) is taken before the awaited audit append; rows
    become visible in commit order. An upload A that starts first but commits after B
    lands *behind* a cursor already past B: a client walking every page from before A
    committed to after it never sees A, though A was committed (and answered 201)
    before the walk's next page was served. Keyset paging needs a key in visibility
    order, which ``created_at`` taken before the await is not."""
    log = GatedLog()
    db = RegistryDB(tmp_path / "r.db")
    reg = Registry(store=ObjectStore(tmp_path / "store"), db=db,
                   policy=policy_mod.Policy(name="t"), audit_append=log.append,
                   max_artifact_bytes=1024)  # fmt: skip
    reg.open_blocking()
    a, b, c = (f"sha256:{i:064x}" for i in (1, 2, 3))  # digest order breaks ms ties
    seen: list[str] = []

    async def register(digest: str) -> None:
        await reg._register(ADMIN, digest, f"m/{digest[-1]}", {},
                            Inspection(format="gguf", size=1, details={}),
                            False, "r", digest)  # fmt: skip

    async def run() -> None:
        log.gate_target = a
        async with trio.open_nursery() as nursery:
            nursery.start_soon(register, a)
            await trio.testing.wait_all_tasks_blocked()
            await register(b)
            await register(c)  # same ms as B or later; its digest sorts after B's
            page, cursor = reg.list(limit=1)
            seen.extend(x.digest for x in page)
            log.release.set()  # A's record is durable; its row commits
        assert a in reg.artifacts
        while cursor is not None:
            page, cursor = reg.list(limit=1, cursor=cursor)
            seen.extend(x.digest for x in page)

    trio.run(run)
    assert sorted(seen) == sorted([a, b, c]), f"pages showed {seen}; {a} was skipped"


# -- attack 4: a transaction left open by a failed ROLLBACK --------------------------------


class BrokenRollback:
    """A connection whose next COMMIT and ROLLBACK fail (an I/O error at the worst
    moment), delegating everything else to the real sqlite3 connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self.armed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if self.armed and sql in ("COMMIT", "ROLLBACK"):
            if sql == "ROLLBACK":
                self.armed = False
            raise sqlite3.OperationalError("disk I/O error")
        return self._conn.execute(sql, *args)


def test_a_failed_rollback_does_not_turn_every_later_transaction_into_a_silent_no_op(
    tmp_path: Path,
) -> None:
    """``transaction()`` now joins any open transaction (``conn.in_transaction``) to
    support ``batch()``. After one COMMIT and its ROLLBACK fail, the connection stays in
    that transaction, and every later "transaction" joins it: no BEGIN, no COMMIT, no
    error. Mutations are acknowledged and never committed, and the readiness ping passes.
    Before, the next BEGIN IMMEDIATE failed loudly and its handler rolled back."""
    db = RegistryDB(tmp_path / "r.db")
    db.open()
    for i in (1, 2):
        db.insert(row(i), None)
    assert db._conn is not None
    proxy = BrokenRollback(db._conn)
    db._conn = proxy  # type: ignore[assignment]
    proxy.armed = True
    with pytest.raises((StorageError, sqlite3.Error)):
        db.set_state(row(1), "revoked", action="revoke", principal="a", reasons=[], ts=TS,
                     seq=1)  # fmt: skip
    try:
        db.set_state(row(2), "revoked", action="revoke", principal="a", reasons=[], ts=TS,
                     seq=2)  # fmt: skip
        db.ping()
    except StorageError:
        return  # failing loudly is fine: the caller voids or answers 503
    other = sqlite3.connect(tmp_path / "r.db")
    committed = other.execute("SELECT state FROM artifacts WHERE digest = ?",
                              (row(2).digest,)).fetchone()[0]  # fmt: skip
    other.close()
    assert committed == "revoked", (
        "set_state returned success and ping passed, but the change was never committed "
        "(it joined the transaction the failed ROLLBACK left open)"
    )


# -- search: concurrent mutations, DB refusals, mark saves, and a kill at any moment -------


class CoinDB(RegistryDB):
    """The real database refusing state changes whenever ``rng`` says so."""

    def __init__(self, path: Path, rng: random.Random) -> None:
        super().__init__(path)
        self.rng = rng

    def set_state(self, art: Artifact, to_state: str, **kw: Any) -> Artifact:
        if self.rng.random() < 0.3:
            raise StorageError("injected: database refused")
        return super().set_state(art, to_state, **kw)


@pytest.mark.parametrize("seed", range(6))
def test_no_kill_moment_under_group_commit_loses_a_mutation_below_the_mark(
    tmp_path: Path, seed: int
) -> None:
    """Real AuditLog + AuditWriter (seqs assigned in its worker thread, many requests
    per fsync), ~80 revokes/deletes arriving concurrently, of which ~30% the database refuses (and
    the void is written), the mark saved at random moments in between, and "kill -9"
    snapshots taken at random moments: each snapshot's committed database plus the log's
    durable records, restarted through the real replay, must carry every non-voided
    mutation. (Expected to hold: this is the mark's main claim, searched.)"""
    rng = random.Random(seed)
    audit = open_log(tmp_path / "audit")
    writer = AuditWriter(audit, checkpoint_every_seconds=None)
    store = ObjectStore(tmp_path / "store")
    db = CoinDB(tmp_path / "r.db", rng)
    reg = Registry(store=store, db=db, policy=policy_mod.Policy(name="t"),
                   audit_append=writer.append, max_artifact_bytes=1024,
                   audit_head=lambda: writer.head_seq,
                   audit_uncertain=lambda: audit.poisoned is not None)  # fmt: skip
    reg.open_blocking()
    for i in range(1, 21):
        art = row(i, rng.choice(["quarantined", "trusted"]))
        db.insert(art, None)
        reg.artifacts[art.digest] = art
    snapshots: list[tuple[Path, list[dict[str, Any]]]] = []

    async def snapshot() -> None:
        # Database first, log after: the log may hold more, never less, than at the kill.
        copy = tmp_path / f"snap-{len(snapshots)}.db"
        src, dst = sqlite3.connect(db.path), sqlite3.connect(copy)
        src.backup(dst)
        src.close()
        dst.close()
        recs = [dict(r) for r in await trio.to_thread.run_sync(
            lambda: list(audit.records_after(0)))]  # fmt: skip
        snapshots.append((copy, recs))

    async def mutate(i: int) -> None:
        digest = f"sha256:{i % 20 + 1:064x}"
        action = rng.choice([Action.REVOKE, Action.DELETE])
        with contextlib.suppress(StorageError, StateConflict):
            await reg.transition(ADMIN, digest, action, route="r", request_id=f"q{i}",
                                 reason="x")  # fmt: skip

    async def chaos(nursery: trio.Nursery) -> None:
        started = 0
        for _ in range(80):
            for _ in range(rng.randrange(3)):  # requests keep arriving meanwhile
                nursery.start_soon(mutate, started)
                started += 1
            await trio.lowlevel.checkpoint()
            if rng.random() < 0.7:
                nursery.start_soon(reg.save_replay_mark)
            if rng.random() < 0.5:
                await snapshot()

    async def run() -> None:
        async with trio.open_nursery() as outer:
            await outer.start(writer.run)
            async with trio.open_nursery() as nursery:
                await chaos(nursery)
            await reg.save_replay_mark()
            await snapshot()
            await writer.close()

    trio.run(run)
    assert snapshots
    for copy, recs in snapshots:
        after = kill9_and_restart(tmp_path, RegistryDB(copy), store, recs)
        assert unreflected(recs, after.db) == [], copy.name


# -- promote: one record, two commits, a kill between them ----------------------------------


class Killed(Exception):
    """Stands for kill -9: nothing after it runs (not a StorageError, so no void)."""


class KilledBetweenCommits(RegistryDB):
    armed = False

    def set_state(self, art: Artifact, to_state: str, **kw: Any) -> Artifact:
        if self.armed and kw.get("action") == "promote":
            raise Killed
        return super().set_state(art, to_state, **kw)


def test_a_kill_between_a_promotes_two_commits_replays_to_one_approval(tmp_path: Path) -> None:
    """``_promote`` commits the promoter's approval (seq None), then the state change
    (with the seq). Killed between them, replay finds no change carrying the seq and
    re-applies the whole promote, approval included: the state ends right, but the
    history then shows the promoter approving twice."""
    state: dict[str, Any] = {}
    db = KilledBetweenCommits(tmp_path / "r.db")

    async def body(reg: Registry, _db: RegistryDB, store: ObjectStore, _d: Disconnect) -> None:
        digest = await _ingest_sample(reg)
        db.armed = True
        with pytest.raises(Killed):
            await reg.transition(ADMIN, digest, Action.PROMOTE, route="r", request_id="p")
        state.update(digest=digest, store=store)

    records = trio.run(_with_real_writer, tmp_path, body, db)
    after = kill9_and_restart(tmp_path, db, state["store"], records)
    assert after.get(state["digest"]).state == "trusted"
    approvals = [h for h in after.db.history(state["digest"]) if h["action"] == "approve"]
    assert len(approvals) == 1, approvals
