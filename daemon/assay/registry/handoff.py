"""Handing a consumer an fd on a trusted object: verified since it last changed.

A full hash of a 70 GB model on every open would make the socket no faster than HTTP.
Instead every full hash (ingest, promote, verify, sweep) records the ``Fingerprint`` of
the file it read, and a handoff ``fstat``s the very fd it is about to send:

* same fingerprint: the file has not changed since it was hashed (ctime cannot be set
  back from user space), so the fd goes out with no read at all;
* no fingerprint yet (a row from before fingerprints, or rebuilt by replay): the fd is
  hashed once, whatever its size, and the fingerprint recorded;
* only the device number differs (a file system whose device numbers change across
  mounts), or any field differs on a file up to ``rehash_max_bytes``: the same fd is
  re-hashed; bytes that still hash to the digest get a new fingerprint and go out,
  other bytes are an integrity failure (recorded, serving blocked) and are refused;
* the file itself changed (inode, size, mtime or ctime) and it is larger than
  ``rehash_max_bytes``: refused and marked failed ("changed") without reading it;
  ``assay verify`` re-hashes it and restores it if its bytes are intact.

State (trusted, integrity ok) is read from the in-memory view per request, which every
revoke, delete and integrity change updates before it answers: a revocation governs the
next open. Split from ``service.py`` by concern; the ordering rule is in ``base.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import trio

from assay.core.tokens import Principal
from assay.registry.base import now
from assay.registry.consumers import OpenRequest
from assay.registry.errors import StoredBytesCorrupt
from assay.registry.integrity import IntegrityOps
from assay.registry.model import Artifact, Fingerprint
from assay.registry.store import UnusableObject, describe, hash_stable

GiB = 1024**3


@dataclass(frozen=True)
class Handoff:
    """An open fd on a trusted artifact's bytes, checked; the caller sends and closes it."""

    artifact: Artifact
    fd: int
    verified_at: str
    #: The fd was re-hashed now (its file changed, or had no fingerprint yet).
    rehashed: bool

    def header(self) -> dict[str, Any]:
        a = self.artifact
        return {"ok": True, "digest": a.digest, "size": a.size, "name": a.name,
                "format": a.format, "verified_at": self.verified_at}  # fmt: skip


class HandoffOps(IntegrityOps):
    #: Largest changed object re-hashed on open (``consumer.rehash_max_bytes``).
    rehash_max_bytes: int = 4 * GiB

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handoff_locks: dict[str, trio.Lock] = {}

    def consumable_target(self, request: OpenRequest) -> Artifact:
        """Step HO-1 (state): the trusted, intact artifact a request names, from memory."""
        if request.name is not None:
            return self.resolve_trusted(request.name)
        assert request.digest is not None
        return self.check_consumable(request.digest)

    async def open_for_consumer(
        self,
        request: OpenRequest,
        *,
        principal: Principal,
        route: str,
        request_id: str,
        extra: dict[str, Any],
    ) -> Handoff:
        """A checked fd for ``request`` (see the module docstring), or a typed refusal.

        An integrity failure found here is recorded as this request's one record
        (``written_record`` on the error), like a fetch that finds one.
        """
        art = self.consumable_target(request)
        context: dict[str, Any] = {"principal": principal, "route": route,
                                   "request_id": request_id, "extra": extra}  # fmt: skip
        # Step HO-2 (open): the store's checked open (one regular file, one name, never
        # a link or a FIFO), then fstat of that same fd.
        try:
            fd, st = await trio.to_thread.run_sync(self._open_and_stat, art.digest)
        except UnusableObject as exc:
            raise await self._refuse_corrupt(art, exc.problem, **context) from None
        try:
            # Step HO-3 (fingerprint): unchanged since its last full hash: no read.
            fp = art.fingerprint
            if fp is not None and fp.matches(st):
                return Handoff(art, fd, fp.verified_at, rehashed=False)
            # Step HO-4 (changed or never fingerprinted): re-hash the same fd, or refuse.
            return await self._rehash_for_handoff(art, fd, st, context)
        except BaseException:
            os.close(fd)
            raise

    def _open_and_stat(self, digest: str) -> tuple[int, os.stat_result]:
        fd = self.store.open_object(digest)
        try:
            return fd, os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            raise UnusableObject("unreadable", exc.strerror or str(exc)) from None

    async def _rehash_for_handoff(
        self, art: Artifact, fd: int, st: os.stat_result, context: dict[str, Any]
    ) -> Handoff:
        # One re-hash per digest at a time: opens that queue behind it find the new
        # fingerprint and read nothing. The registry's digest lock is not held while
        # hashing, so a revoke meanwhile is not delayed.
        async with self._handoff_locks.setdefault(art.digest, trio.Lock()):
            current = self.check_consumable(art.digest)
            fp = current.fingerprint
            if fp is not None and fp.matches(st):
                return Handoff(current, fd, fp.verified_at, rehashed=False)
            if fp is not None and fp.file_changed(st) and st.st_size > self.rehash_max_bytes:
                # Step HO-5 (too large to re-hash now): the file changed since its hash.
                raise await self._refuse_corrupt(current, "changed", **context)
            # Step HO-6 (re-hash): the bytes of the fd that will be sent, in a worker
            # thread, from its start; None if the file changed while it was read.
            actual, _size, hashed = await trio.to_thread.run_sync(hash_stable, fd)
            if actual != art.digest or hashed is None:
                problem = actual if actual != art.digest else "changing"
                raise await self._refuse_corrupt(current, problem, **context)
            async with self._lock(art.digest):
                # Step HO-7 (state again): a revoke or a failure during the hash wins.
                current = self.check_consumable(art.digest)
                stamp = Fingerprint.of(hashed, now())
                updated = await self._db(self.db.set_fingerprint, current, stamp)
                self.artifacts[art.digest] = updated
            return Handoff(updated, fd, stamp.verified_at, rehashed=True)

    async def _refuse_corrupt(
        self,
        art: Artifact,
        problem: str,
        *,
        principal: Principal,
        route: str,
        request_id: str,
        extra: dict[str, Any],
    ) -> StoredBytesCorrupt:
        """The refusal for unusable bytes, after recording the failure (once: only the
        request that finds the artifact intact records it, as this request's record)."""
        err = StoredBytesCorrupt(f"{art.digest}: {describe(problem)}")
        async with self._lock(art.digest):
            current = self.get(art.digest)
            if current.integrity == "ok":
                _updated, record = await self._integrity_changed(
                    current, "failed", problem, principal, route, request_id,
                    status=err.status, error_code=err.code, extra=extra,
                )  # fmt: skip
                err.written_record = record
        return err
