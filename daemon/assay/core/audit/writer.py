"""``AuditWriter``: the trio face of ``AuditLog`` with group commit.

``await writer.append(fields)`` returns the sealed record only once it is fsynced. While
one batch is being written in a worker thread, every append that arrives queues up and
goes into the next batch: under load, one fsync covers many requests, so durable
throughput scales with concurrency instead of being capped at one fsync per request.

Write policies (what an I/O failure means for the caller):

``fail_closed`` (default)
    Every waiter of the failed batch gets ``AuditWriteFailed``; the HTTP edge answers 503
    and the action is not taken. Nothing happens without its record. An fsync failure
    poisons the log (the kernel may have dropped the pages), so every later append fails
    too until the daemon is restarted and the log reopened.
``availability_first``
    The failure is logged to stderr, counted in ``dropped`` (see ``metrics()``), the
    writer reports unhealthy, and each waiter gets a record marked ``"dropped": true``
    with ``seq`` None: requests keep being served *without* audit records. Choose it
    only where an outage costs more than a gap in the trail; the gap is visible (metric,
    readiness, log) but not recoverable.

Either way a malformed record (``BadRequest``) fails only its own caller, before batching.
A background task signs a checkpoint every ``checkpoint_every_seconds`` and ``close()``
signs a final one; each is passed to ``on_checkpoint`` (the daemon sends it to journald).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import trio

from assay.core.audit.chain import Record
from assay.core.audit.checkpoint import Checkpoint
from assay.core.audit.log import AuditLog, utc_now
from assay.core.audit.receipt import HEADER as RECEIPT_HEADER
from assay.core.audit.schema import SCHEMA_VERSION, check_fields
from assay.core.errors import AssayError, AuditWriteFailed

log = logging.getLogger("assay.audit")

WritePolicy = Literal["fail_closed", "availability_first"]
CheckpointHook = Callable[[Mapping[str, Any]], None]


@dataclass(eq=False)
class _Pending:
    fields: dict[str, Any]
    done: trio.Event = field(default_factory=trio.Event)
    result: Record | None = None
    error: str | None = None


class AuditWriter:
    """Group-committing async appender over one ``AuditLog`` (which it owns and closes)."""

    def __init__(
        self,
        audit_log: AuditLog,
        *,
        write_policy: WritePolicy = "fail_closed",
        checkpoint_every_seconds: float | None = 60.0,
        on_checkpoint: CheckpointHook | None = None,
        max_batch: int = 1024,
    ) -> None:
        if write_policy not in ("fail_closed", "availability_first"):
            raise ValueError(f"unknown write policy {write_policy!r}")
        self.log = audit_log
        self.write_policy: WritePolicy = write_policy
        self._cp_seconds = checkpoint_every_seconds
        self._on_checkpoint = on_checkpoint
        self._max_batch = max_batch
        send, recv = trio.open_memory_channel[_Pending](math.inf)
        self._send, self._recv = send, recv
        self._running = False
        self._closing = False
        self._scope: trio.CancelScope | None = None
        self._loop_done = trio.Event()
        self._run_done = trio.Event()
        self._outstanding = 0
        self._idle = trio.Event()
        self._idle.set()
        self._last_ok = True
        self._seen_checkpoints = audit_log.stats.checkpoints
        self.dropped = 0
        self.failures = 0
        self.last_error: str | None = None
        #: Told ``(records, seconds, ok)`` after each batch (the daemon's metrics).
        self.batch_observer: Callable[[int, float, bool], None] | None = None

    # -- state --------------------------------------------------------------------------

    @property
    def head_seq(self) -> int:
        return self.log.head_seq

    @property
    def outstanding(self) -> int:
        """Appends made and not yet answered: the queue a slow disk builds up."""
        return self._outstanding

    @property
    def latest_checkpoint(self) -> Checkpoint | None:
        return self.log.latest_checkpoint

    @property
    def healthy(self) -> bool:
        """Running, accepting appends, and the last batch (if any) was written."""
        return self._running and not self._closing and self._last_ok and self.log.poisoned is None

    def receipt_headers(self, record: Mapping[str, Any]) -> dict[str, str]:
        """``{"Assay-Receipt": ...}`` for a mutation's durable record, or ``{}`` if this
        process has no signing key or the record was dropped. Cheap (one Ed25519 sign)."""
        receipt = self.log.receipt(record)
        return {} if receipt is None else {RECEIPT_HEADER: receipt.to_header()}

    def metrics(self) -> dict[str, Any]:
        s = self.log.stats
        return {
            "healthy": self.healthy, "write_policy": self.write_policy,
            "head_seq": self.head_seq, "records_written": s.records, "batches": s.batches,
            "fsyncs": s.fsyncs, "checkpoints": s.checkpoints, "rotations": s.rotations,
            "dropped_records": self.dropped, "failed_batches": self.failures,
            "last_error": self.last_error,
        }  # fmt: skip

    # -- lifecycle ----------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve appends until ``close()``; ``nursery.start(writer.run)`` awaits readiness."""
        if self._running or self._closing:
            raise RuntimeError("AuditWriter.run may be started once")
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                nursery.start_soon(self._commit_loop)
                if self._cp_seconds and self.log.can_checkpoint:
                    nursery.start_soon(self._checkpoint_loop, self._cp_seconds)
                self._running = True
                task_status.started()
        finally:
            self._running = False
            self._fail_queued("audit writer stopped")
            self._run_done.set()

    async def drain(self) -> None:
        """Wait until every append made so far has completed (written or failed)."""
        if self._outstanding:
            await self._idle.wait()

    async def close(self) -> None:
        """Refuse new appends, finish queued ones, sign a final checkpoint, stop ``run``."""
        if self._closing:
            return
        self._closing = True
        if self._running:
            await self.drain()
            self._send.close()
            await self._loop_done.wait()
            await self.checkpoint_now()
        if self._scope is not None:
            self._scope.cancel()
            # Wait until ``run`` has exited: a periodic checkpoint may still be in its
            # worker thread, and the log must not close under it.
            await self._run_done.wait()
        await trio.to_thread.run_sync(self.log.close)

    # -- appends ------------------------------------------------------------------------

    async def append(self, fields: Mapping[str, Any]) -> Record:
        """Seal and durably write one record; returns it (with ``seq`` and ``record_hash``).

        Raises ``BadRequest`` for malformed fields, ``AuditWriteFailed`` if the batch
        could not be written under ``fail_closed`` or the writer is not running. Once
        queued, the wait is shielded from cancellation: the caller always learns the
        outcome of a record that may already be on disk.
        """
        pending = _Pending(check_fields(fields))
        if not self._running or self._closing:
            raise AuditWriteFailed("audit writer is not running")
        if self._outstanding == 0:
            self._idle = trio.Event()
        self._outstanding += 1
        try:
            self._send.send_nowait(pending)
            with trio.CancelScope(shield=True):
                await pending.done.wait()
        finally:
            self._outstanding -= 1
            if self._outstanding == 0:
                self._idle.set()
        if pending.error is not None:
            raise AuditWriteFailed(pending.error)
        assert pending.result is not None
        return pending.result

    async def _commit_loop(self) -> None:
        try:
            async for first in self._recv:
                batch = [first]
                while len(batch) < self._max_batch:
                    try:
                        batch.append(self._recv.receive_nowait())
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                # Shielded: a batch handed to the thread always reports back to its waiters.
                with trio.CancelScope(shield=True):
                    await self._commit(batch)
        finally:
            self._loop_done.set()
            self._fail_queued("audit writer stopped")

    async def _commit(self, batch: list[_Pending]) -> None:
        started = time.perf_counter()
        try:
            records = await trio.to_thread.run_sync(
                partial(self.log.append_batch, [p.fields for p in batch], validated=True)
            )
        except (AssayError, OSError) as exc:
            self._failed(batch, exc)
        except Exception as exc:  # a bug must not strand the waiters
            log.exception("audit batch failed unexpectedly")
            self._failed(batch, exc)
        else:
            self._last_ok = True
            for p, rec in zip(batch, records, strict=True):
                p.result = rec
                p.done.set()
        if self.batch_observer is not None:
            self.batch_observer(len(batch), time.perf_counter() - started, self._last_ok)
        self._notify_checkpoints()

    def _failed(self, batch: list[_Pending], exc: BaseException) -> None:
        code = getattr(exc, "code", type(exc).__name__)
        detail = f"audit record not written ({code}): {getattr(exc, 'detail', exc)}"
        self.failures += 1
        self.last_error = detail
        self._last_ok = False
        if self.write_policy == "fail_closed":
            for p in batch:
                p.error = detail
                p.done.set()
            return
        self.dropped += len(batch)
        log.error("audit: %s; %d record(s) dropped (availability_first), %d dropped in total",
                  detail, len(batch), self.dropped)  # fmt: skip
        ts = utc_now()
        for p in batch:
            p.result = {**p.fields, "v": SCHEMA_VERSION, "seq": None, "ts": ts,
                        "log_id": self.log.log_id, "prev_hash": None, "record_hash": None,
                        "dropped": True}  # fmt: skip
            p.done.set()

    def _fail_queued(self, why: str) -> None:
        while True:
            try:
                p = self._recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            p.error = why
            p.done.set()

    # -- checkpoints --------------------------------------------------------------------

    async def checkpoint_now(self) -> Checkpoint | None:
        """Sign a checkpoint of the current head now (None if nothing new or no key)."""
        if not self.log.can_checkpoint:
            return None
        try:
            cp = await trio.to_thread.run_sync(self.log.checkpoint_now)
        except (AssayError, OSError):
            log.exception("audit checkpoint failed")
            return None
        self._notify_checkpoints()
        return cp

    async def _checkpoint_loop(self, every: float) -> None:
        while True:
            await trio.sleep(every)
            if self.log.head_seq == 0:
                continue  # an empty log has nothing to commit to; its first record will
            await self.checkpoint_now()

    def _notify_checkpoints(self) -> None:
        count = self.log.stats.checkpoints
        cp = self.log.latest_checkpoint
        if count == self._seen_checkpoints or cp is None:
            return
        self._seen_checkpoints = count
        if self._on_checkpoint is not None:
            try:
                self._on_checkpoint(cp.to_dict())
            except Exception:
                log.exception("audit on_checkpoint hook failed")
