"""SQLite (WAL) metadata: artifacts, history, approvals, publisher signatures.

Every method blocks; the service calls them through ``trio.to_thread`` with a limiter of
one, so a single connection serves all writes in order. Each change stores the seq of the
audit record that authorised it (``history.audit_seq``) in the same transaction: that is
how startup reconciles the database with the audit log, which is written (durably) first
and acts as the write-ahead record.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from assay.core.errors import StorageError, StorageFull
from assay.registry.model import Artifact, Fingerprint

log = logging.getLogger("assay.db")

SCHEMA = """
CREATE TABLE IF NOT EXISTS artifacts (
    digest TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    size INTEGER NOT NULL,
    format TEXT NOT NULL,
    format_details TEXT NOT NULL,
    metadata TEXT NOT NULL,
    state TEXT NOT NULL,
    integrity TEXT NOT NULL DEFAULT 'ok',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    uploaded_by TEXT NOT NULL,
    last_verified_at TEXT,
    state_changed_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS artifacts_name ON artifacts(name, state);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    digest TEXT NOT NULL,
    ts TEXT NOT NULL,
    action TEXT NOT NULL,
    from_state TEXT,
    to_state TEXT,
    principal TEXT,
    reasons TEXT NOT NULL,
    audit_seq INTEGER
);
CREATE INDEX IF NOT EXISTS history_digest ON history(digest);
CREATE INDEX IF NOT EXISTS history_seq ON history(audit_seq);
CREATE TABLE IF NOT EXISTS approvals (
    digest TEXT NOT NULL,
    principal TEXT NOT NULL,
    ts TEXT NOT NULL,
    PRIMARY KEY (digest, principal)
);
CREATE TABLE IF NOT EXISTS signatures (
    digest TEXT NOT NULL,
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL,
    PRIMARY KEY (digest, key_id)
);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

#: The stat fingerprint of the file the last full hash vouched for (``Fingerprint``),
#: added to databases made before it existed. NULL: none recorded.
FINGERPRINT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("obj_dev", "INTEGER"),
    ("obj_ino", "INTEGER"),
    ("obj_size", "INTEGER"),
    ("obj_mtime_ns", "INTEGER"),
    ("obj_ctime_ns", "INTEGER"),
    ("obj_verified_at", "TEXT"),
)
_SET_FINGERPRINT = ", ".join(f"{name} = ?" for name, _ in FINGERPRINT_COLUMNS)


def _fingerprint_values(fp: Fingerprint | None) -> tuple[Any, ...]:
    if fp is None:
        return (None,) * len(FINGERPRINT_COLUMNS)
    return (fp.dev, fp.ino, fp.size, fp.mtime_ns, fp.ctime_ns, fp.verified_at)


def _fingerprint(r: sqlite3.Row) -> Fingerprint | None:
    if r["obj_ino"] is None or r["obj_ctime_ns"] is None:
        return None
    return Fingerprint(
        dev=r["obj_dev"], ino=r["obj_ino"], size=r["obj_size"], mtime_ns=r["obj_mtime_ns"],
        ctime_ns=r["obj_ctime_ns"], verified_at=r["obj_verified_at"] or "",
    )  # fmt: skip


def _row(r: sqlite3.Row, approvers: frozenset[str]) -> Artifact:
    return Artifact(
        digest=r["digest"],
        name=r["name"],
        size=r["size"],
        format=r["format"],
        format_details=json.loads(r["format_details"]),
        metadata=json.loads(r["metadata"]),
        state=r["state"],
        integrity=r["integrity"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
        uploaded_by=r["uploaded_by"],
        state_changed_at=r["state_changed_at"],
        last_verified_at=r["last_verified_at"],
        approvers=approvers,
        fingerprint=_fingerprint(r),
    )


class RegistryDB:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._depth = 0

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(SCHEMA)
            have = {row["name"] for row in conn.execute("PRAGMA table_info(artifacts)")}
            for name, kind in FINGERPRINT_COLUMNS:
                if name not in have:
                    conn.execute(f"ALTER TABLE artifacts ADD COLUMN {name} {kind}")
        except sqlite3.Error as exc:
            raise StorageError(f"database {self.path} unusable: {exc}") from None
        self.path.chmod(0o600)
        self._conn = conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction; any sqlite error becomes a ``StorageError``.

        Inside another one of this thread's transactions (``batch()``; the lock is
        re-entrant, so no other thread can be in one meanwhile) it joins it. Only an
        explicit depth says so: a transaction SQLite left open (a COMMIT and its
        ROLLBACK both failed) is rolled back first, never joined, so later changes are
        never silently swallowed by it.
        """
        if self._conn is None:
            raise StorageError("database is not open")
        with self._lock:
            conn = self._conn
            if self._depth:
                self._depth += 1
                try:
                    yield conn
                finally:
                    self._depth -= 1
                return
            try:
                if conn.in_transaction:
                    log.error("rolling back a transaction left open by an earlier failure")
                    conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                self._depth = 1
                try:
                    yield conn
                finally:
                    self._depth = 0
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error as rollback:  # SQLite rolls back itself on I/O errors
                        log.error("rollback failed: %s", rollback)  # noqa: TRY400
                if isinstance(exc, sqlite3.Error):
                    if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
                        raise StorageFull(f"database write failed: {exc}") from None
                    raise StorageError(f"database write failed: {exc}") from None
                raise

    def batch(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """Many changes in one transaction, so one fsync: replay applies its changes so.
        A failure rolls the whole batch back."""
        return self.transaction()

    # -- reads -------------------------------------------------------------------------

    def load_all(self) -> dict[str, Artifact]:
        with self.transaction() as c:
            approvals: dict[str, set[str]] = {}
            for a in c.execute("SELECT digest, principal FROM approvals"):
                approvals.setdefault(a["digest"], set()).add(a["principal"])
            return {
                r["digest"]: _row(r, frozenset(approvals.get(r["digest"], ())))
                for r in c.execute("SELECT * FROM artifacts ORDER BY rowid")
            }

    def get(self, digest: str) -> Artifact | None:
        """One artifact's row (with its approvals), or None: what replay reads per record."""
        with self.transaction() as c:
            row = c.execute("SELECT * FROM artifacts WHERE digest = ?", (digest,)).fetchone()
            if row is None:
                return None
            approvers = c.execute("SELECT principal FROM approvals WHERE digest = ?", (digest,))
            return _row(row, frozenset(a["principal"] for a in approvers))

    def history(self, digest: str) -> list[dict[str, Any]]:
        with self.transaction() as c:
            rows = c.execute(
                "SELECT ts, action, from_state, to_state, principal, reasons, audit_seq "
                "FROM history WHERE digest = ? ORDER BY id",
                (digest,),
            ).fetchall()
        return [dict(r) | {"reasons": json.loads(r["reasons"])} for r in rows]

    def approvals(self, digest: str) -> dict[str, str]:
        """Who approved ``digest`` and when (token id -> ISO 8601 time)."""
        with self.transaction() as c:
            rows = c.execute(
                "SELECT principal, ts FROM approvals WHERE digest = ?", (digest,)
            ).fetchall()
        return {r["principal"]: r["ts"] for r in rows}

    def signatures(self, digest: str) -> tuple[tuple[str, str], ...]:
        with self.transaction() as c:
            rows = c.execute(
                "SELECT key_id, signature FROM signatures WHERE digest = ?", (digest,)
            ).fetchall()
        return tuple((r["key_id"], r["signature"]) for r in rows)

    def reconciled_through(self) -> tuple[int, str | None]:
        """The replay mark: every mutation record up to this seq is settled; and where
        in the log the record at (or before) it ends (a ``Position`` as JSON), if saved."""
        with self.transaction() as c:
            rows = dict(c.execute(
                "SELECT key, value FROM kv WHERE key IN ('reconciled_through', 'replay_anchor')"
            ).fetchall())  # fmt: skip
        return int(rows.get("reconciled_through", 0)), rows.get("replay_anchor")

    def set_reconciled_through(self, seq: int, anchor: str | None = None) -> None:
        """Move the mark (and its anchor: a mark without one drops the old anchor)."""
        with self.transaction() as c:
            c.execute(
                "INSERT INTO kv(key, value) VALUES('reconciled_through', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(seq),),
            )
            if anchor is None:
                c.execute("DELETE FROM kv WHERE key = 'replay_anchor'")
            else:
                c.execute(
                    "INSERT INTO kv(key, value) VALUES('replay_anchor', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (anchor,),
                )

    def applied_seqs(self, seqs: list[int]) -> set[int]:
        """Which of ``seqs`` some database change already carries (history.audit_seq)."""
        if not seqs:
            return set()
        with self.transaction() as c:
            marks = ",".join("?" * len(seqs))
            rows = c.execute(
                f"SELECT audit_seq FROM history WHERE audit_seq IN ({marks})",  # noqa: S608
                seqs,
            ).fetchall()
        return {int(r["audit_seq"]) for r in rows}

    # -- writes (each records the audit seq that authorised it) --------------------------

    @staticmethod
    def _history(
        c: sqlite3.Connection,
        digest: str,
        ts: str,
        action: str,
        from_state: str | None,
        to_state: str | None,
        principal: str | None,
        reasons: list[str],
        seq: int | None,
    ) -> None:
        c.execute(
            "INSERT INTO history(digest, ts, action, from_state, to_state, principal, reasons,"
            " audit_seq) VALUES (?,?,?,?,?,?,?,?)",
            (digest, ts, action, from_state, to_state, principal, json.dumps(reasons), seq),
        )

    def insert(self, art: Artifact, seq: int | None) -> None:
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM artifacts WHERE digest = ?", (art.digest,)).fetchone():
                return
            c.execute(
                "INSERT INTO artifacts(digest, name, size, format, format_details, metadata,"
                " state, integrity, created_at, updated_at, uploaded_by, state_changed_at,"
                " obj_dev, obj_ino, obj_size, obj_mtime_ns, obj_ctime_ns, obj_verified_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    art.digest,
                    art.name,
                    art.size,
                    art.format,
                    json.dumps(art.format_details, sort_keys=True),
                    json.dumps(art.metadata, sort_keys=True),
                    art.state,
                    art.integrity,
                    art.created_at,
                    art.updated_at,
                    art.uploaded_by,
                    art.state_changed_at,
                    *_fingerprint_values(art.fingerprint),
                ),
            )
            self._history(
                c, art.digest, art.created_at, "ingest", None, art.state, art.uploaded_by, [], seq
            )

    def set_state(
        self,
        art: Artifact,
        to_state: str,
        *,
        action: str,
        principal: str | None,
        reasons: list[str],
        ts: str,
        seq: int | None,
    ) -> Artifact:
        with self.transaction() as c:
            cur = c.execute(
                "UPDATE artifacts SET state = ?, updated_at = ?, state_changed_at = ?"
                " WHERE digest = ? AND state = ?",
                (to_state, ts, ts, art.digest, art.state),
            )
            if cur.rowcount == 1:
                self._history(
                    c, art.digest, ts, action, art.state, to_state, principal, reasons, seq
                )
        return replace(art, state=to_state, updated_at=ts, state_changed_at=ts)

    def add_approval(
        self,
        art: Artifact,
        principal: str,
        ts: str,
        seq: int | None,
        signatures: tuple[tuple[str, str], ...] = (),
    ) -> Artifact:
        """One approval and the publisher signatures sent with it, in one transaction."""
        with self.transaction() as c:
            c.execute(
                "INSERT OR IGNORE INTO approvals(digest, principal, ts) VALUES (?,?,?)",
                (art.digest, principal, ts),
            )
            c.executemany(
                "INSERT OR REPLACE INTO signatures(digest, key_id, signature) VALUES (?,?,?)",
                [(art.digest, key_id, sig) for key_id, sig in signatures],
            )
            self._history(c, art.digest, ts, "approve", art.state, art.state, principal, [], seq)
        return replace(art, approvers=art.approvers | {principal})

    def promote(
        self,
        art: Artifact,
        principal: str,
        ts: str,
        seq: int | None,
        signatures: tuple[tuple[str, str], ...],
        reasons: list[str],
        fingerprint: Fingerprint | None = None,
    ) -> Artifact:
        """The promoter's approval and the transition to trusted, in one transaction: a
        crash between two would leave the approval without the change its record names.
        ``fingerprint``: the file step PRO-1 hashed, recorded with the change."""
        with self.batch():
            approved = self.add_approval(art, principal, ts, None, signatures)
            if fingerprint is not None:
                approved = self.set_fingerprint(approved, fingerprint)
            return self.set_state(approved, "trusted", action="promote", principal=principal,
                                  reasons=reasons, ts=ts, seq=seq)  # fmt: skip

    def set_fingerprint(self, art: Artifact, fingerprint: Fingerprint | None) -> Artifact:
        """Record which file a full hash just vouched for (None forgets it)."""
        with self.transaction() as c:
            c.execute(
                f"UPDATE artifacts SET {_SET_FINGERPRINT} WHERE digest = ?",  # noqa: S608
                (*_fingerprint_values(fingerprint), art.digest),
            )
        return replace(art, fingerprint=fingerprint)

    def ping(self) -> None:
        """A trivial transaction: the database file is open, readable and not locked up."""
        with self.transaction() as c:
            c.execute("SELECT 1").fetchone()

    def touch_verified_many(
        self, digests: list[str], ts: str, fingerprints: Mapping[str, Fingerprint] | None = None
    ) -> None:
        """Checks that found nothing changed, in one transaction (a sweep's thousands),
        with the fingerprint of the file each one hashed (a digest absent from
        ``fingerprints`` keeps none: its file changed while it was hashed). A row whose
        integrity failed meanwhile keeps the time of that failure and no fingerprint."""
        fps = fingerprints or {}
        with self.transaction() as c:
            c.executemany(
                f"UPDATE artifacts SET last_verified_at = ?, {_SET_FINGERPRINT}"  # noqa: S608
                " WHERE digest = ? AND integrity = 'ok'",
                [(ts, *_fingerprint_values(fps.get(d)), d) for d in digests],
            )

    def touch_verified(
        self, art: Artifact, ts: str, fingerprint: Fingerprint | None = None
    ) -> Artifact:
        """A check that found nothing changed: ``last_verified_at`` moves, and the
        fingerprint becomes that of the file just hashed."""
        with self.transaction() as c:
            c.execute(
                f"UPDATE artifacts SET last_verified_at = ?, {_SET_FINGERPRINT}"  # noqa: S608
                " WHERE digest = ?",
                (ts, *_fingerprint_values(fingerprint), art.digest),
            )
        return replace(art, last_verified_at=ts, fingerprint=fingerprint)

    def set_integrity(
        self,
        art: Artifact,
        integrity: str,
        ts: str,
        seq: int | None,
        principal: str | None,
        fingerprint: Fingerprint | None = None,
    ) -> Artifact:
        """A change of integrity; a failure forgets the fingerprint, a restoration
        records the one of the file its hash vouched for."""
        if integrity != "ok":
            fingerprint = None
        with self.transaction() as c:
            c.execute(
                "UPDATE artifacts SET integrity = ?, last_verified_at = ?, updated_at = ?,"  # noqa: S608
                f" {_SET_FINGERPRINT} WHERE digest = ?",
                (integrity, ts, ts, *_fingerprint_values(fingerprint), art.digest),
            )
            if integrity != art.integrity:
                self._history(
                    c,
                    art.digest,
                    ts,
                    f"integrity.{integrity}",
                    art.state,
                    art.state,
                    principal,
                    [],
                    seq,
                )
        return replace(art, integrity=integrity, last_verified_at=ts, updated_at=ts,
                       fingerprint=fingerprint)  # fmt: skip
