"""The registry's shared state and the ordering rule every operation follows.

Ordering rule for every mutation (so a crash never leaves a change without its record):
  1. decide with the pure core (transition table, policy) on the cached state;
  2. append the audit record and wait until it is durable;
  3. apply the change in one SQLite transaction that also stores the record's ``seq``;
  4. update the in-memory view the read path serves from.
A crash between 2 and 3 is repaired at startup by ``reconcile``, which re-applies every
mutation record that no database change carries yet (see ``reconcile.py``); a change the
database refuses while running voids its record instead (``_commit``).
Blocking work runs in ``trio.to_thread``. The operations are grouped by concern:
``ingest.py``, ``integrity.py``, and the state changes in ``service.py`` (``Registry``).
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import trio

from assay.core.audit.reader import Position
from assay.core.errors import AssayError, AuditWriteFailed, BadRequest, NotFound, StorageError
from assay.core.tokens import Principal
from assay.registry import policy as policy_mod
from assay.registry.db import RegistryDB
from assay.registry.digests import parse_digest
from assay.registry.model import PREFIX_BUCKET, Artifact, ArtifactTable
from assay.registry.replay import InFlight
from assay.registry.states import State
from assay.registry.store import ObjectStore

log = logging.getLogger("assay.registry")

Appender = Callable[[dict[str, Any]], Any]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Outcome:
    """A mutation's result: the artifact after it and the audit record that authorised it."""

    artifact: Artifact
    record: Mapping[str, Any]
    created: bool = False
    decision: policy_mod.Decision | None = None


@dataclass(eq=False)
class Mutation:
    """One mutation between its record and its settled row change (see ``InFlight``)."""

    record: Mapping[str, Any] = field(default_factory=dict)
    #: Its change failed and the void that cancels its record is durable.
    voided: bool = False


class RegistryBase:
    """State and helpers every group of operations shares (see the module docstring)."""

    def __init__(
        self,
        *,
        store: ObjectStore,
        db: RegistryDB,
        policy: policy_mod.Policy,
        audit_append: Callable[[dict[str, Any]], Any],
        max_artifact_bytes: int,
        block_bytes: int = 4 * 1024 * 1024,
        events: Callable[[str, dict[str, Any]], None] | None = None,
        approver_standing: Callable[[Mapping[str, str], str], Mapping[str, str]] | None = None,
        audit_head: Callable[[], int] = lambda: 0,
        audit_uncertain: Callable[[], bool] = lambda: False,
        audit_position: Callable[[], Position] | None = None,
        on_trusted_change: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        self.store = store
        self.db = db
        self.policy = policy
        self._append = audit_append
        self._audit_head = audit_head
        self._audit_uncertain = audit_uncertain
        self._audit_position = audit_position
        self.max_artifact_bytes = max_artifact_bytes
        self.block_bytes = block_bytes
        self._events = events or (lambda _kind, record_fields: None)
        #: Blocking: for approvals (token id -> when), why each no longer counts
        #: (``Authenticator.standing``).
        #: None only where there are no tokens to check (unit tests of other concerns).
        self.approver_standing = approver_standing
        self._db_limiter = trio.CapacityLimiter(1)
        self._locks: dict[str, trio.Lock] = {}
        self.artifacts = ArtifactTable()
        self.last_sweep: dict[str, Any] | None = None
        #: While a sweep re-hashes: (artifacts hashed, artifacts to hash); else None.
        self.sweep_progress: tuple[int, int] | None = None
        #: What startup replay read and applied (``reconcile.ReplayReport``).
        self.last_replay: dict[str, Any] | None = None
        self._in_flight = InFlight()
        #: The replay mark as last saved (see ``reconcile.py``); set by startup replay.
        self.replay_mark = 0
        #: Where in the log replay may start for that mark, and recent head positions
        #: that may become it (each at most the mark it is saved with).
        self.replay_anchor: Position | None = None
        self._positions: deque[Position] = deque(maxlen=16)
        #: Awaited with the digest after every change that can alter the trusted set
        #: (``_trusted_changed``); the daemon publishes the TUF repository from it.
        self.on_trusted_change = on_trusted_change

    # -- startup ------------------------------------------------------------------------

    def open_blocking(self) -> None:
        self.store.open()
        self.db.open()
        self.artifacts = ArtifactTable(self.db.load_all())

    async def _db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self._db_limiter)

    # -- the mutation protocol (ordering rule steps 2 and 3) ------------------------------

    @asynccontextmanager
    async def _mutation(self, fields: dict[str, Any]) -> AsyncIterator[Mutation]:
        """Append ``fields`` durably and hold the mutation open while the body applies it.

        While open, the replay mark stays below its record. It closes when the body
        finishes, or its change was voided, or its record was never written; it stays
        open (the mark pinned until restart, whose replay then applies it) only where the
        record may be durable with its change neither applied nor voided.
        """
        token = self._in_flight.open(self._audit_head())
        mutation = Mutation()
        settled = False
        try:
            try:
                mutation.record = await self._append(fields)
            except AuditWriteFailed:
                settled = not self._audit_uncertain()  # fsync failed: may be on disk
                raise
            except BaseException:
                settled = True  # refused before any I/O (a malformed record)
                raise
            seq = mutation.record.get("seq")
            if seq is None:  # dropped under availability_first: nothing to replay
                settled = True
            else:
                self._in_flight.recorded(token, int(seq))
            # The record is durable: its change must now be applied or voided, so the
            # body runs to its end even if the request is cancelled (a client that hangs
            # up); the cancel lands after it, at the next checkpoint.
            with trio.CancelScope(shield=True):
                yield mutation
            settled = True
        finally:
            if settled or mutation.voided:
                self._in_flight.close(token)

    async def save_replay_mark(self) -> int:
        """Persist how far every mutation record is settled; startup replays only after it.

        Called every second and after the drain at shutdown, so a clean restart reads
        no record and a crash restart reads only the last moments' records.
        """
        if self._audit_position is not None:
            # Blocking: takes the log's lock, which a batch's fsync may hold. Sampled
            # before the mark is computed, so any mutation opened since has a higher seq.
            position = await trio.to_thread.run_sync(self._audit_position)
            self._positions.append(position)
            head = position.seq
        else:
            head = self._audit_head()
        mark = self._in_flight.safe_mark(head)
        candidates = [p for p in (*self._positions, self.replay_anchor) if p and p.seq <= mark]
        anchor = max(candidates, key=lambda p: p.seq, default=None)
        moved = anchor is not None and (
            self.replay_anchor is None or anchor.seq > self.replay_anchor.seq
        )
        if mark > self.replay_mark or moved:
            await self._db(self.db.set_reconciled_through, mark,
                           anchor.to_json() if anchor else None)  # fmt: skip
            self.replay_mark, self.replay_anchor = mark, anchor
        return self.replay_mark

    async def _commit(self, mutation: Mutation, fn: Callable[..., Any], *args: Any,
                      **kwargs: Any) -> Any:  # fmt: skip
        """Apply a change whose record is already durable; if the database refuses it,
        void the record, so the log never claims a change the client was told failed.

        A void (``audit.void``, ``extra.voids_seq``) is itself a durable record; startup
        replay skips a voided record. Only if the void cannot be written either does the
        record stand, and replay then applies the change at the next start.
        """
        record = mutation.record
        try:
            return await self._db(fn, *args, **kwargs)
        except StorageError as exc:
            try:
                void = await self._append(
                    record_fields(
                        None,
                        "audit.void",
                        record.get("route"),
                        record.get("request_id"),
                        str(record.get("target") or ""),
                        None,
                        None,
                        None,
                        reasons=[f"the database refused the change of seq {record['seq']}"],
                        decision="error",
                        error_code=exc.code,
                        extra={"voids_seq": int(record["seq"])},
                    )
                )
                # A void dropped under availability_first is no void: the record stands.
                mutation.voided = void.get("seq") is not None
            except AssayError:
                log.critical(
                    "seq %s is durable but its database change failed and the void could "
                    "not be recorded; startup replay will apply it",
                    record["seq"],
                )
            raise

    def settled_through(self) -> int:
        """The seq up to which every mutation record is settled: applied, voided, or never
        written. A reader of lifecycle records up to it knows each one's fate (the
        database carries its change or never will), so it can page past them safely."""
        return self._in_flight.safe_mark(self._audit_head())

    async def _trusted_changed(self, digest: str, record: Mapping[str, Any]) -> None:
        """Tell ``on_trusted_change`` that ``digest``'s trust changed, once its change is
        committed and in memory, before the operation returns (so before its answer).

        Shielded: a client that hangs up must not cancel the publish of a revocation it
        caused. A failure raised here carries the change's record, which is the
        request's one record (the change stands; the answer says what failed).
        """
        if self.on_trusted_change is None:
            return
        with trio.CancelScope(shield=True):
            try:
                await self.on_trusted_change(digest)
            except AssayError as err:
                if err.written_record is None:
                    err.written_record = record
                raise

    def _lock(self, digest: str) -> trio.Lock:
        return self._locks.setdefault(digest, trio.Lock())

    # -- reads (sync, from memory: never block) -----------------------------------------

    def get(self, digest: str) -> Artifact:
        digest = parse_digest(digest)
        art = self.artifacts.get(digest)
        if art is None:
            raise NotFound(f"no artifact {digest}", code="artifact.not_found")
        return art

    def list(
        self,
        *,
        state: str | None = None,
        name: str | None = None,
        limit: int = 100,
        cursor: str | None = None,
        digest_prefix: str | None = None,
    ) -> tuple[list[Artifact], str | None]:
        """One page in listing order (as rows became visible), and the next page's cursor.

        ``digest_prefix``: only artifacts whose digest starts with it (``sha256:``
        optional, at least ``PREFIX_BUCKET`` lowercase hex digits), in every state; how
        ``assay`` resolves an abbreviated digest."""
        if state is not None and state not in {s.value for s in State}:
            raise BadRequest(f"unknown state {state!r}", code="request.bad_state")
        prefix = None if digest_prefix is None else _digest_prefix(digest_prefix)
        if cursor is not None:
            try:
                after: str | None = parse_digest(cursor)
            except BadRequest:
                after = None
            if after is None or after not in self.artifacts:
                raise BadRequest("cursor is not one this registry issued",
                                 code="request.bad_cursor")  # fmt: skip
            cursor = after
        return self.artifacts.page(
            after=cursor,
            limit=limit,
            keep=lambda a: (state is None or a.state == state) and (name is None or a.name == name),
            digest_prefix=prefix,
        )

    def resolve_trusted(self, name: str) -> Artifact:
        """The most recently promoted trusted artifact with ``name``, intact on disk."""
        candidates = [
            a
            for a in self.artifacts.values()
            if a.name == name and a.state == State.TRUSTED and a.integrity == "ok"
        ]
        if not candidates:
            raise NotFound(f"no trusted artifact named {name!r}", code="artifact.not_found")
        return max(candidates, key=lambda a: (a.state_changed_at, a.digest))

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in State}
        for a in self.artifacts.values():
            out[a.state] += 1
        out["integrity_failed"] = sum(1 for a in self.artifacts.values() if a.integrity != "ok")
        return out


_PREFIX = re.compile(rf"(?:sha256:)?([0-9a-f]{{{PREFIX_BUCKET},64}})")


def _digest_prefix(value: str) -> str:
    """``sha256:<hex>`` for a valid prefix, else ``request.bad_digest``."""
    found = _PREFIX.fullmatch(value)
    if found is None:
        raise BadRequest(
            f"digest_prefix must be at least {PREFIX_BUCKET} lowercase hex digits "
            "(sha256: optional)",
            code="request.bad_digest",
        )
    return "sha256:" + found.group(1)


def record_fields(
    principal: Principal | None,
    action: str,
    route: str | None,
    request_id: str | None,
    target: str,
    from_state: str | None,
    to_state: str | None,
    status: int | None,
    *,
    reasons: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    decision: str = "allow",
    error_code: str | None = None,
) -> dict[str, Any]:
    return {
        "request_id": request_id,
        "principal": principal.id if principal else None,
        "auth_mode": principal.auth_mode if principal else "local",
        "action": action,
        "route": route,
        "target": target,
        "from_state": from_state,
        "to_state": to_state,
        "decision": decision,
        "reasons": reasons or [],
        "status": status,
        "error_code": error_code,
        "params": [],
        "purpose": None,
        "extra": extra or {},
    }
