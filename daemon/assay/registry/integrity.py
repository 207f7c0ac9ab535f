"""Integrity: re-hash stored bytes, record failures and restorations, gate serving.

Split from ``service.py`` by concern; the ordering rule is in ``base.py``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

import trio

from assay.core.errors import AssayError, StorageError
from assay.core.tokens import Principal
from assay.registry.base import RegistryBase, now, record_fields
from assay.registry.digests import parse_digest
from assay.registry.errors import NotTrusted, StoredBytesCorrupt
from assay.registry.model import Artifact, Fingerprint, StatLike
from assay.registry.states import State
from assay.registry.store import UnusableObject, describe

log = logging.getLogger("assay.registry")

#: A sweep writes the times of unchanged checks this many at a time.
TOUCH_BATCH = 512

#: Writes the request's own record, given the check's result, before anything changes.
RecordRequest = Callable[[dict[str, Any]], Awaitable[Mapping[str, Any]]]


class IntegrityOps(RegistryBase):
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
        hashed: StatLike | None = None,
        extra: dict[str, Any] | None = None,
    ) -> tuple[Artifact, dict[str, Any]]:
        """Record, then apply, a change of ``art``'s integrity ("failed" or back to "ok").

        Like every state change: the record is durable before the database changes, and
        the change carries the record's seq, so startup replay can finish it after a crash.
        ``hashed``: for a restoration, the file the hash vouched for (its fingerprint is
        kept); a failure forgets the fingerprint. ``extra``: more fields for the record
        (a consumer handoff's peer).
        """
        failed = integrity == "failed"
        async with self._mutation(
            record_fields(
                principal,
                "artifact.integrity_failed" if failed else "artifact.integrity_restored",
                route,
                request_id,
                art.digest,
                art.state,
                art.state,
                status,
                reasons=[describe(actual)],
                decision="deny" if failed else "allow",
                error_code=error_code,
                extra={**(extra or {}), "integrity": integrity},
            )
        ) as mutation:
            record = dict(mutation.record)
            ts = now()
            updated: Artifact = await self._commit(
                mutation,
                self.db.set_integrity,
                art,
                integrity,
                ts,
                record["seq"],
                principal.id if principal else None,
                Fingerprint.of(hashed, ts) if hashed is not None and not failed else None,
            )
            self.artifacts[art.digest] = updated
        kind = "integrity_failed" if failed else "integrity_restored"
        fields = {"digest": art.digest, "state": art.state, "seq": record["seq"]}
        self._events(kind, fields | {"principal": principal.id if principal else ""})
        if failed:
            log.error("integrity failure: %s hashes to %s", art.digest, actual)
        if art.state == State.TRUSTED:
            await self._trusted_changed(art.digest, record)
        return updated, record

    async def verify(
        self,
        digest: str,
        *,
        principal: Principal | None = None,
        route: str | None = None,
        request_id: str | None = None,
        status: int | None = None,
        record_request: RecordRequest | None = None,
        failure: tuple[int, str] | None = None,
    ) -> tuple[dict[str, Any], Mapping[str, Any] | None]:
        """Re-hash one artifact's stored bytes; a mismatch is recorded and blocks serving.

        Returns the result and the request's record when this call wrote it: the record
        of the integrity change (with ``status``, or with ``failure``'s status and code
        when the caller answers a failed check otherwise), or else the one
        ``record_request`` writes. Either way it is durable before anything changes: if
        it cannot be written, the check changes nothing.
        """
        async with self._lock(parse_digest(digest)):
            art = self.get(digest)
            if art.state == State.DELETED:
                return {"digest": art.digest, "ok": True, "skipped": "deleted"}, None
            # Step VER-1 (re-hash): the stored bytes, read from disk now, and which file
            # they were read from (``hash_stable``). Reads only.
            actual, _size, hashed = await trio.to_thread.run_sync(
                self.store.hash_object, art.digest
            )
            ok = actual == art.digest
            result = {"digest": art.digest, "ok": ok, "actual": actual}
            # Step VER-2 (record a change): failed <-> ok is a state change with a record,
            # durable before the database changes; for a request it is its one record.
            if (art.integrity == "ok") != ok:
                answer, code = failure if failure is not None and not ok else (status, None)
                _updated, record = await self._integrity_changed(
                    art, "ok" if ok else "failed", actual, principal, route, request_id,
                    status=answer, error_code=code, hashed=hashed,
                )  # fmt: skip
                return result, record
            # Step VER-3 (no change): the request's record first, then only the time of
            # the last check and the fingerprint of the file just hashed move.
            written = await record_request(result) if record_request is not None else None
            await self._touch_verified([(art.digest, hashed if ok else None)])
            return result, written

    async def sweep(
        self,
        progress: Callable[[int, int], None] | None = None,
        *,
        principal: Principal | None = None,
        route: str | None = None,
        request_id: str | None = None,
        record_request: RecordRequest | None = None,
    ) -> dict[str, Any]:
        """Verify every stored artifact; returns counts and the failures.

        In two phases, so that a sweep asked for over HTTP changes nothing unless its
        request's record (``record_request``, given the counts) is durable first: every
        artifact is re-hashed (reads only), the record is written, and only then are the
        findings applied. Each integrity change is also its own record (carrying the
        request id), durable before its database change; the times of unchanged checks
        are written ``TOUCH_BATCH`` at a time, not one fsync each.
        """
        started = now()
        digests = sorted(self.artifacts)
        found: list[tuple[Artifact, str, os.stat_result | None]] = []
        # Step SWP-1 (re-hash): every stored artifact, under its lock; nothing changes.
        self.sweep_progress = (0, len(digests))
        try:
            for i, digest in enumerate(digests):
                async with self._lock(digest):
                    art = self.artifacts.get(digest)
                    if art is not None and art.state != State.DELETED:
                        actual, _size, hashed = await trio.to_thread.run_sync(
                            self.store.hash_object, digest
                        )
                        found.append((art, actual, hashed))
                self.sweep_progress = (i + 1, len(digests))
                if progress is not None:
                    progress(i + 1, len(digests))
        finally:
            self.sweep_progress = None
        failed = [art.digest for art, actual, _hashed in found if actual != art.digest]
        summary: dict[str, Any] = {"started": started, "checked": len(found), "failed": failed}
        # Step SWP-2 (the request's record): if it cannot be written, nothing is applied.
        if record_request is not None:
            await record_request(summary)
        # Step SWP-3 (apply): per artifact, under its lock, unless a newer check or change
        # moved its integrity meanwhile (that one saw fresher bytes).
        unchanged: list[tuple[str, os.stat_result | None]] = []
        errors: list[dict[str, str]] = []
        for seen, actual, hashed in found:
            async with self._lock(seen.digest):
                art = self.artifacts.get(seen.digest)
                if art is None or art.state == State.DELETED or art.integrity != seen.integrity:
                    continue
                ok = actual == art.digest
                if (art.integrity == "ok") == ok:
                    unchanged.append((art.digest, hashed if ok else None))
                else:
                    try:
                        await self._integrity_changed(
                            art, "ok" if ok else "failed", actual, principal, route, request_id,
                            hashed=hashed,
                        )  # fmt: skip
                    except AssayError as exc:
                        # One artifact's change could not be made (e.g. its record could
                        # not be written): reported, and the sweep goes on to the next.
                        log.error("sweep: checking %s failed: %s", art.digest, exc.detail)  # noqa: TRY400
                        errors.append({"digest": art.digest, "code": exc.code})
            if len(unchanged) >= TOUCH_BATCH:
                await self._touch_verified(unchanged)
                unchanged = []
        await self._touch_verified(unchanged)
        self.last_sweep = summary | {"finished": now()}
        if errors:
            self.last_sweep["errors"] = errors
        self._events("sweep", {"checked": len(found), "failed": len(failed), "errors": len(errors)})
        return self.last_sweep

    async def _touch_verified(self, checked: list[tuple[str, os.stat_result | None]]) -> None:
        """Move ``last_verified_at`` of checks that changed nothing, in one transaction,
        with the fingerprint of the file each one hashed (None: it changed while read).

        A failure is logged, not raised: the checks did happen (their request's record
        may already say so), only their time is not kept.
        """
        if not checked:
            return
        ts = now()
        digests = [digest for digest, _hashed in checked]
        fingerprints = {d: Fingerprint.of(h, ts) for d, h in checked if h is not None}
        try:
            await self._db(self.db.touch_verified_many, digests, ts, fingerprints)
        except StorageError as exc:
            log.error(  # noqa: TRY400 - the detail is the message; no traceback wanted
                "could not store the time of %d checks: %s", len(digests), exc.detail
            )
            return
        for digest in digests:
            if digest in self.artifacts and self.artifacts[digest].integrity == "ok":
                self.artifacts[digest] = replace(
                    self.artifacts[digest], last_verified_at=ts,
                    fingerprint=fingerprints.get(digest),
                )  # fmt: skip

    async def mark_corrupt_while_serving(
        self, digest: str, actual: str, *, request_id: str | None = None
    ) -> None:
        """A fetch found the bytes changed mid-stream, after its response had started
        (and its request record was written): the failure is a record of its own."""
        async with self._lock(parse_digest(digest)):
            art = self.get(digest)
            if art.integrity == "ok":
                await self._integrity_changed(art, "failed", actual, None, None, request_id)

    async def open_consumable(
        self, digest: str, *, principal: Principal, route: str, request_id: str
    ) -> tuple[Artifact, int]:
        """A trusted, intact artifact and an open fd on its bytes, for serving.

        Bytes gone from the store, or an object path that is not one regular file, are
        an integrity failure like bytes changed: recorded (as this request's record) and
        serving blocked, never a bare 500.
        """
        art = self.check_consumable(digest)
        try:
            fd: int = await trio.to_thread.run_sync(self.store.open_object, art.digest)
        except UnusableObject as exc:
            err = StoredBytesCorrupt(f"{art.digest}: {exc}")
            async with self._lock(art.digest):
                current = self.get(art.digest)
                if current.integrity == "ok":
                    _updated, record = await self._integrity_changed(
                        current, "failed", exc.problem, principal, route, request_id,
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
