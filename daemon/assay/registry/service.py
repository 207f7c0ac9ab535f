"""The registry's operations: ingest, promote, revoke, delete, approve.

Ordering rule for every mutation (so a crash never leaves a change without its record):
  1. decide with the pure core (transition table, policy) on the cached state;
  2. append the audit record and wait until it is durable;
  3. apply the change in one SQLite transaction that also stores the record's ``seq``;
  4. update the in-memory view the read path serves from.
A crash between 2 and 3 is repaired at startup by ``reconcile``, which re-applies every
mutation record that no database change carries yet (see ``reconcile.py``).
Blocking work runs in ``trio.to_thread``.
"""

from __future__ import annotations

import json
import logging
import mmap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import trio

from assay.core.errors import AssayError, BadRequest, NotFound, PayloadTooLarge, StorageError
from assay.core.tokens import Principal
from assay.formats.errors import FormatRefused
from assay.formats.inspect import Inspection, inspect_file
from assay.registry import policy as policy_mod
from assay.registry.body import BodySource, fill
from assay.registry.db import Artifact, RegistryDB
from assay.registry.digests import parse_digest
from assay.registry.errors import NotTrusted, PolicyRefused, StoredBytesCorrupt
from assay.registry.states import INITIAL_STATE, Action, State, next_state
from assay.registry.store import Ingest, ObjectStore

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


class Registry:
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
    ) -> None:
        self.store = store
        self.db = db
        self.policy = policy
        self._append = audit_append
        self.max_artifact_bytes = max_artifact_bytes
        self.block_bytes = block_bytes
        self._events = events or (lambda _kind, _fields: None)
        self._db_limiter = trio.CapacityLimiter(1)
        self._locks: dict[str, trio.Lock] = {}
        self.artifacts: dict[str, Artifact] = {}
        self.last_sweep: dict[str, Any] | None = None

    # -- startup ------------------------------------------------------------------------

    def open_blocking(self) -> None:
        self.store.open()
        self.db.open()
        self.artifacts = self.db.load_all()

    async def _db(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self._db_limiter)

    async def _commit(
        self, record: Mapping[str, Any], fn: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Any:
        """Apply a change whose record is already durable; if the database refuses it,
        void the record, so the log never claims a change the client was told failed.

        A void (``audit.void``, ``extra.voids_seq``) is itself a durable record; startup
        replay skips a voided record. Only if the void cannot be written either does the
        record stand, and replay then applies the change at the next start.
        """
        try:
            return await self._db(fn, *args, **kwargs)
        except StorageError as exc:
            try:
                await self._append(
                    _fields(
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
            except AssayError:
                log.critical(
                    "seq %s is durable but its database change failed and the void could "
                    "not be recorded; startup replay will apply it",
                    record["seq"],
                )
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

    def list(self, *, state: str | None = None, name: str | None = None) -> list[Artifact]:
        if state is not None and state not in {s.value for s in State}:
            raise BadRequest(f"unknown state {state!r}", code="request.bad_state")
        arts = [
            a
            for a in self.artifacts.values()
            if (state is None or a.state == state) and (name is None or a.name == name)
        ]
        return sorted(arts, key=lambda a: (a.created_at, a.digest))

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

    # -- ingest -------------------------------------------------------------------------

    async def ingest(
        self,
        principal: Principal,
        *,
        name: str,
        metadata: dict[str, str],
        declared: str | None,
        body: BodySource,
        route: str,
        request_id: str,
    ) -> Outcome:
        """Stream ``body`` into the store, inspect, and register as quarantined."""
        ingest: Ingest = await trio.to_thread.run_sync(self.store.begin, self.max_artifact_bytes)
        try:
            await self._pump(ingest, body)
            inspection = await trio.to_thread.run_sync(
                lambda: inspect_file(ingest.read_at, ingest.size)
            )
            digest = ingest.digest()
            if declared is not None and declared != digest:
                await trio.to_thread.run_sync(ingest.commit, declared)  # raises, removes temp
        except BaseException:
            await trio.to_thread.run_sync(ingest.abort)
            raise
        # Steps ING-5..7 hold the digest's lock: two uploads of the same bytes at once
        # must yield one artifact (the second sees the first), and no transition of that
        # digest may interleave with its registration.
        async with self._lock(digest):
            try:
                existing = self.artifacts.get(digest)
                if existing is not None:
                    # Step ING-5 (idempotent): a known digest keeps its state; bytes not
                    # re-kept.
                    await trio.to_thread.run_sync(ingest.abort)
                    record = await self._append(
                        _fields(
                            principal,
                            "artifact.ingest",
                            route,
                            request_id,
                            digest,
                            existing.state,
                            existing.state,
                            200,
                            reasons=["duplicate digest: existing record returned unchanged"],
                        )
                    )
                    return Outcome(existing, record, created=False)
                # Step ING-6 (commit): fsync, rename into the content address.
                _digest, newly_stored = await trio.to_thread.run_sync(ingest.commit, declared)
            except BaseException:
                await trio.to_thread.run_sync(ingest.abort)
                raise
            # Step ING-7 (register): record first, then the row.
            return await self._register(
                principal, digest, name, metadata, inspection, newly_stored, route, request_id
            )

    async def _register(
        self,
        principal: Principal,
        digest: str,
        name: str,
        metadata: dict[str, str],
        inspection: Inspection,
        newly_stored: bool,
        route: str,
        request_id: str,
    ) -> Outcome:
        ts = now()
        art = Artifact(
            digest=digest,
            name=name,
            size=inspection.size,
            format=inspection.format,
            format_details=dict(inspection.details),
            metadata=metadata,
            state=INITIAL_STATE.value,
            integrity="ok",
            created_at=ts,
            updated_at=ts,
            uploaded_by=principal.id,
            state_changed_at=ts,
        )
        try:
            record = await self._append(
                _fields(
                    principal,
                    "artifact.ingest",
                    route,
                    request_id,
                    digest,
                    None,
                    art.state,
                    201,
                    extra=_ingest_extra(art),
                )
            )
        except BaseException:
            # No record, so no artifact: the bytes must not linger in the store unowned.
            if newly_stored:
                await trio.to_thread.run_sync(self.store.remove, digest)
            raise
        try:
            await self._commit(record, self.db.insert, art, record["seq"])
        except BaseException:
            if newly_stored:
                await trio.to_thread.run_sync(self.store.remove, digest)
            raise
        self.artifacts[digest] = art
        self._events(
            "ingest",
            {"digest": digest, "state": art.state, "principal": principal.id, "seq": record["seq"]},
        )
        return Outcome(art, record, created=True)

    async def _pump(self, ingest: Ingest, body: BodySource) -> None:
        """Fill page-aligned blocks from ``body``; hash and write them off the event loop.

        Two blocks alternate: one is filled on the loop while a worker thread hashes and
        writes the other. The channel has no buffer, so a block is handed over only when
        the writer is idle, which means the block it last wrote is free to fill again.
        A failure on either side stops both and is raised as itself, not as a group, so
        the adapter answers it as the typed error it is.
        """
        blocks = [ingest.alloc_block(self.block_bytes) for _ in range(2)]
        send, receive = trio.open_memory_channel[tuple[mmap.mmap, int]](0)
        failures: list[Exception] = []

        async def writer(cancel: trio.CancelScope) -> None:
            async with receive:
                try:
                    async for block, length in receive:
                        await trio.to_thread.run_sync(ingest.write_block, block, length)
                except Exception as exc:
                    # Recorded before the channel closes, so it comes before the
                    # BrokenResourceError that closing raises in the filler.
                    failures.append(exc)
                    cancel.cancel()

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer, nursery.cancel_scope)
                async with send:
                    try:
                        await self._fill_blocks(body, blocks, send)
                    except Exception as exc:
                        failures.append(exc)
                        nursery.cancel_scope.cancel()
        finally:
            for block in blocks:
                block.close()
        if failures:
            raise failures[0]

    async def _fill_blocks(
        self,
        body: BodySource,
        blocks: Sequence[mmap.mmap],
        send: trio.MemorySendChannel[tuple[mmap.mmap, int]],
    ) -> None:
        total = 0
        for turn in range(self.max_artifact_bytes // len(blocks[0]) + 2):
            block = blocks[turn % 2]
            with memoryview(block) as view:
                length = await fill(body, view)
            total += length
            if total > self.max_artifact_bytes:
                raise PayloadTooLarge(
                    f"artifact larger than the {self.max_artifact_bytes}-byte cap"
                )
            if length:
                await send.send((block, length))
            if length < len(block):
                return

    # -- state changes ------------------------------------------------------------------

    async def transition(
        self,
        principal: Principal,
        digest: str,
        action: Action,
        *,
        route: str,
        request_id: str,
        reason: str = "",
        signatures: tuple[tuple[str, str], ...] = (),
    ) -> Outcome:
        digest = parse_digest(digest)
        async with self._lock(digest):
            art = self.get(digest)
            to_state = next_state(State(art.state), action)
            if action is Action.PROMOTE:
                return await self._promote(principal, art, route, request_id, signatures)
            reasons = [reason] if reason else []
            record = await self._append(
                _fields(
                    principal,
                    f"artifact.{action.value}",
                    route,
                    request_id,
                    digest,
                    art.state,
                    to_state.value,
                    200,
                    reasons=reasons,
                )
            )
            updated = await self._commit(
                record,
                self.db.set_state,
                art,
                to_state.value,
                action=action.value,
                principal=principal.id,
                reasons=reasons,
                ts=now(),
                seq=record["seq"],
            )
            self.artifacts[digest] = updated
            if to_state is State.DELETED:
                await trio.to_thread.run_sync(self.store.remove, digest)
            self._events(
                action.value,
                {
                    "digest": digest,
                    "state": to_state.value,
                    "principal": principal.id,
                    "seq": record["seq"],
                },
            )
            return Outcome(updated, record)

    async def _promote(
        self,
        principal: Principal,
        art: Artifact,
        route: str,
        request_id: str,
        signatures: tuple[tuple[str, str], ...],
    ) -> Outcome:
        # Step PRO-1 (re-hash): the stored bytes still hash to the digest.
        actual, size = await trio.to_thread.run_sync(self.store.rehash, art.digest)
        if actual != art.digest:
            err = StoredBytesCorrupt(f"stored bytes of {art.digest} hash to {actual}")
            if art.integrity == "ok":
                # The discovery is this request's one record (status and code as answered).
                _updated, record = await self._integrity_changed(
                    art, "failed", actual, principal, route, request_id,
                    status=err.status, error_code=err.code,
                )  # fmt: skip
                err.written_record = record
            raise err
        # Step PRO-2 (re-inspect): the format is judged again from content.
        fd_path = self.store.path_for(art.digest)

        def reinspect() -> tuple[str, int]:
            with fd_path.open("rb") as f:

                def read_at(offset: int, length: int) -> bytes:
                    f.seek(offset)
                    return f.read(length)

                return inspect_file(read_at, size).format, size

        try:
            fmt, size = await trio.to_thread.run_sync(reinspect)
        except FormatRefused as exc:
            fmt = f"refused:{exc.reason}"
        # Signatures sent with this request count now but are stored only with the
        # approval, after its record is durable: a refused or unrecorded request keeps none.
        stored_sigs = dict(await self._db(self.db.signatures, art.digest)) | dict(signatures)
        # Step PRO-3 (policy): every rule is evaluated; the caller's approval counts.
        facts = policy_mod.Facts(
            digest=art.digest,
            format=fmt,
            size=size,
            metadata=art.metadata,
            approvers=art.approvers | {principal.id},
            signatures=tuple(sorted(stored_sigs.items())),
        )
        decision = policy_mod.evaluate(self.policy, facts)
        if decision.awaiting_approvals:
            # Step PRO-4 (two-person rule): record this approval; the state does not move.
            record = await self._append(
                _fields(
                    principal,
                    "artifact.approve",
                    route,
                    request_id,
                    art.digest,
                    art.state,
                    art.state,
                    202,
                    reasons=list(decision.failed),
                    extra={"policy": self.policy.name, **_signature_extra(signatures)},
                )
            )
            updated = await self._commit(
                record, self.db.add_approval, art, principal.id, now(), record["seq"], signatures
            )
            self.artifacts[art.digest] = updated
            self._events(
                "approve",
                {
                    "digest": art.digest,
                    "state": art.state,
                    "principal": principal.id,
                    "seq": record["seq"],
                },
            )
            return Outcome(updated, record, decision=decision)
        if not decision.allowed:
            raise PolicyRefused(
                f"policy {self.policy.name!r} refused promotion: " + "; ".join(decision.failed),
                reasons=list(decision.failed),
                policy=self.policy.name,
            )
        record = await self._append(
            _fields(
                principal,
                "artifact.promote",
                route,
                request_id,
                art.digest,
                art.state,
                State.TRUSTED.value,
                200,
                reasons=list(decision.passed),
                extra={
                    "policy": self.policy.name,
                    "approvers": ",".join(sorted(facts.approvers)),
                    **_signature_extra(signatures),
                },
            )
        )
        with_approval = await self._commit(
            record, self.db.add_approval, art, principal.id, now(), None, signatures
        )
        updated = await self._commit(
            record,
            self.db.set_state,
            with_approval,
            State.TRUSTED.value,
            action="promote",
            principal=principal.id,
            reasons=list(decision.passed),
            ts=now(),
            seq=record["seq"],
        )
        self.artifacts[art.digest] = updated
        self._events(
            "promote",
            {
                "digest": art.digest,
                "state": "trusted",
                "principal": principal.id,
                "seq": record["seq"],
            },
        )
        return Outcome(updated, record, decision=decision)

    # -- integrity ----------------------------------------------------------------------

    async def _integrity_changed(
        self,
        art: Artifact,
        integrity: str,
        actual: str,
        principal: Principal | None,
        route: str | None,
        request_id: str | None,
        *,
        status: int | None = None,
        error_code: str | None = None,
    ) -> tuple[Artifact, dict[str, Any]]:
        """Record, then apply, a change of ``art``'s integrity ("failed" or back to "ok").

        Like every state change: the record is durable before the database changes, and
        the change carries the record's seq, so startup replay can finish it after a crash.
        """
        failed = integrity == "failed"
        record = await self._append(
            _fields(
                principal,
                "artifact.integrity_failed" if failed else "artifact.integrity_restored",
                route,
                request_id,
                art.digest,
                art.state,
                art.state,
                status,
                reasons=[
                    "stored bytes are missing"
                    if actual == "missing"
                    else f"stored bytes hash to {actual}"
                ],
                decision="deny" if failed else "allow",
                error_code=error_code,
                extra={"integrity": integrity},
            )
        )
        updated: Artifact = await self._commit(
            record,
            self.db.set_integrity,
            art,
            integrity,
            now(),
            record["seq"],
            principal.id if principal else None,
        )
        self.artifacts[art.digest] = updated
        kind = "integrity_failed" if failed else "integrity_restored"
        fields = {"digest": art.digest, "state": art.state, "seq": record["seq"]}
        self._events(kind, fields | {"principal": principal.id if principal else ""})
        if failed:
            log.error("integrity failure: %s hashes to %s", art.digest, actual)
        return updated, record

    async def verify(
        self,
        digest: str,
        *,
        principal: Principal | None = None,
        route: str | None = None,
        request_id: str | None = None,
        status: int | None = None,
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Re-hash one artifact's stored bytes; a mismatch is recorded and blocks serving.

        Returns the result and, when the integrity changed, the record of that change
        (for a verify request it is the request's one record, with ``status``).
        """
        async with self._lock(parse_digest(digest)):
            art = self.get(digest)
            if art.state == State.DELETED:
                return {"digest": art.digest, "ok": True, "skipped": "deleted"}, None
            # Step VER-1 (re-hash): the stored bytes, read from disk now.
            actual, _size = await trio.to_thread.run_sync(self.store.rehash, art.digest)
            ok = actual == art.digest
            result = {"digest": art.digest, "ok": ok, "actual": actual}
            # Step VER-2 (record a change): failed <-> ok is a state change with a record.
            if (art.integrity == "ok") != ok:
                _updated, record = await self._integrity_changed(
                    art, "ok" if ok else "failed", actual, principal, route, request_id,
                    status=status,
                )  # fmt: skip
                return result, record
            # Step VER-3 (no change): only the time of the last check moves.
            updated = await self._db(self.db.touch_verified, art, now())
            self.artifacts[art.digest] = updated
            return result, None

    async def sweep(
        self,
        progress: Callable[[int, int], None] | None = None,
        *,
        principal: Principal | None = None,
        route: str | None = None,
        request_id: str | None = None,
    ) -> dict[str, Any]:
        """Verify every stored artifact; returns counts and the failures.

        Each integrity change is its own record (one per artifact, carrying the request
        id of a sweep asked for over HTTP), besides the sweep request's own record.
        """
        started = now()
        digests = sorted(self.artifacts)
        failed: list[str] = []
        checked = 0
        for i, digest in enumerate(digests):
            result, _record = await self.verify(
                digest, principal=principal, route=route, request_id=request_id
            )
            if "skipped" not in result:
                checked += 1
            if not result["ok"]:
                failed.append(digest)
            if progress is not None:
                progress(i + 1, len(digests))
        self.last_sweep = {
            "started": started,
            "finished": now(),
            "checked": checked,
            "failed": failed,
        }
        self._events("sweep", {"checked": checked, "failed": len(failed)})
        return self.last_sweep

    async def mark_corrupt_while_serving(
        self, digest: str, actual: str, *, request_id: str | None = None
    ) -> None:
        """A fetch found the bytes changed mid-stream, after its response had started
        (and its request record was written): the failure is a record of its own."""
        art = self.get(digest)
        if art.integrity == "ok":
            await self._integrity_changed(art, "failed", actual, None, None, request_id)

    async def open_consumable(
        self, digest: str, *, principal: Principal, route: str, request_id: str
    ) -> tuple[Artifact, int]:
        """A trusted, intact artifact and an open fd on its bytes, for serving.

        Bytes gone from the store are an integrity failure like bytes changed: recorded
        (as this request's record) and serving blocked, never a bare 500.
        """
        art = self.check_consumable(digest)
        try:
            fd: int = await trio.to_thread.run_sync(self.store.open_fd, art.digest)
        except FileNotFoundError:
            err = StoredBytesCorrupt(f"stored bytes of {art.digest} are missing")
            async with self._lock(art.digest):
                current = self.get(art.digest)
                if current.integrity == "ok":
                    _updated, record = await self._integrity_changed(
                        current, "failed", "missing", principal, route, request_id,
                        status=err.status, error_code=err.code,
                    )  # fmt: skip
                    err.written_record = record
            raise err from None
        return art, fd

    def check_consumable(self, digest: str) -> Artifact:
        """Runtime consumption: trusted and intact only; checked on every request."""
        art = self.get(digest)
        if art.state != State.TRUSTED:
            raise NotTrusted(f"{art.digest} is {art.state}; only trusted artifacts are served")
        if art.integrity != "ok":
            raise StoredBytesCorrupt(f"{art.digest} failed its integrity check; serving blocked")
        return art


def _signature_extra(signatures: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """Publisher signatures sent with an approval, so replay can restore them (public data)."""
    return {"signatures": json.dumps(sorted(signatures))} if signatures else {}


def _ingest_extra(art: Artifact) -> dict[str, Any]:
    """What replay needs to rebuild the row if the crash came before the DB commit."""
    return {
        "name": art.name,
        "size": art.size,
        "format": art.format,
        "metadata": json.dumps(art.metadata, sort_keys=True),
        "format_details": json.dumps(art.format_details, sort_keys=True),
    }


def _fields(
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
