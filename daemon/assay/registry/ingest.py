"""Ingest: stream an upload into the store, inspect it, register it as quarantined.

Split from ``service.py`` by concern; the ordering rule is in ``base.py``.
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Sequence
from typing import Any

import trio

from assay.core.errors import PayloadTooLarge
from assay.core.tokens import Principal
from assay.formats.inspect import Inspection, inspect_file
from assay.registry.base import Outcome, RegistryBase, now, record_fields
from assay.registry.body import BodySource, fill
from assay.registry.model import Artifact, Fingerprint, StatLike
from assay.registry.states import INITIAL_STATE
from assay.registry.store import Ingest


class IngestOps(RegistryBase):
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
                        record_fields(
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
            # Step ING-7 (register): record first, then the row, with the fingerprint of
            # the file the upload's hash vouches for.
            return await self._register(
                principal, digest, name, metadata, inspection, newly_stored, route, request_id,
                ingest.committed_stat,
            )  # fmt: skip

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
        committed: StatLike | None = None,
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
            fingerprint=Fingerprint.of(committed, ts) if committed is not None else None,
        )
        fields = record_fields(principal, "artifact.ingest", route, request_id, digest, None,
                               art.state, 201, extra=_ingest_extra(art))  # fmt: skip
        try:
            async with self._mutation(fields) as mutation:
                record = mutation.record
                await self._commit(mutation, self.db.insert, art, record["seq"])
                self.artifacts[digest] = art
        except BaseException:
            # No record or no row, so no artifact: the bytes must not linger unowned.
            if newly_stored:
                await trio.to_thread.run_sync(self.store.remove, digest)
            raise
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


def _ingest_extra(art: Artifact) -> dict[str, Any]:
    """What replay needs to rebuild the row if the crash came before the DB commit."""
    return {
        "name": art.name,
        "size": art.size,
        "format": art.format,
        "metadata": json.dumps(art.metadata, sort_keys=True),
        "format_details": json.dumps(art.format_details, sort_keys=True),
    }
