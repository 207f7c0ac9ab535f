"""``AuditWriter`` under trio: group commit, write policies, lifecycle, checkpoints.

Fsyncs are counted through an injected function and failures injected the same way
(tests run as root, so permissions cannot make a directory unwritable). No timing.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from assay.core.audit import files
from assay.core.audit.writer import AuditWriter
from assay.core.errors import AuditWriteFailed, BadRequest
from tests.unit.audit_util import SIGNING, fields, open_log, read_files, verify_bytes


class Faults:
    """Injectable fsync/write that count calls and fail on demand."""

    def __init__(self) -> None:
        self.fsyncs = 0
        self.fail_fsync = False
        self.fail_write = False

    def fsync(self, fd: int) -> None:
        self.fsyncs += 1
        if self.fail_fsync:
            raise OSError(errno.EIO, "Input/output error")

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if self.fail_write:
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)


def _writer(tmp: Path, faults: Faults, **kw: Any) -> AuditWriter:
    log = open_log(tmp, fsync=faults.fsync, write=faults.write, signing_key=SIGNING,
                   checkpoint_every=10_000)  # fmt: skip
    kw.setdefault("checkpoint_every_seconds", None)
    return AuditWriter(log, **kw)


async def _append_many(writer: AuditWriter, n: int) -> list[Any]:
    results: list[Any] = [None] * n

    async def one(i: int) -> None:
        try:
            results[i] = await writer.append(fields(i))
        except AuditWriteFailed as exc:
            results[i] = exc

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return results


async def test_concurrent_appends_share_fsyncs(tmp_path: Path) -> None:
    faults = Faults()
    writer = _writer(tmp_path, faults)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        assert writer.healthy
        records = await _append_many(writer, 50)
        assert sorted(r["seq"] for r in records) == list(range(1, 51))
        assert all(isinstance(r["record_hash"], str) for r in records)
        # 50 durable records, a handful of fsyncs: appends that arrive while a batch is
        # being written all go into the next one.
        assert faults.fsyncs <= 3 < 50
        assert writer.log.stats.fsyncs == faults.fsyncs and writer.log.stats.batches <= 3
        await writer.close()
    assert verify_bytes(read_files(tmp_path)).ok


async def test_fail_closed_fails_every_waiter_and_stays_failed(tmp_path: Path) -> None:
    faults = Faults()
    writer = _writer(tmp_path, faults)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.append(fields(0))
        faults.fail_fsync = True
        results = await _append_many(writer, 50)
        assert all(isinstance(r, AuditWriteFailed) for r in results)
        assert results[0].code == "audit.write_failed" and "fsync" in results[0].detail
        assert not writer.healthy and writer.metrics()["failed_batches"] >= 1
        faults.fail_fsync = False  # an fsync failure poisons: no silent resume
        with pytest.raises(AuditWriteFailed):
            await writer.append(fields(1))
        await writer.close()


async def test_fail_closed_after_a_write_error_recovers(tmp_path: Path) -> None:
    faults = Faults()
    writer = _writer(tmp_path, faults)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        faults.fail_write = True
        with pytest.raises(AuditWriteFailed, match="No space left"):
            await writer.append(fields(0))
        assert not writer.healthy
        faults.fail_write = False
        record = await writer.append(fields(1))
        assert record["seq"] == 1 and writer.healthy
        await writer.close()
    assert verify_bytes(read_files(tmp_path)).ok


async def test_availability_first_keeps_serving_and_counts_drops(tmp_path: Path) -> None:
    faults = Faults()
    writer = _writer(tmp_path, faults, write_policy="availability_first")
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        faults.fail_write = True
        dropped = await _append_many(writer, 10)
        assert all(r["dropped"] is True and r["seq"] is None for r in dropped)
        assert writer.dropped == 10 and writer.metrics()["dropped_records"] == 10
        assert not writer.healthy
        faults.fail_write = False
        record = await writer.append(fields(11))
        assert record["seq"] == 1 and "dropped" not in record and writer.healthy
        await writer.close()


async def test_malformed_fields_fail_only_their_caller(tmp_path: Path) -> None:
    writer = _writer(tmp_path, Faults())
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        with pytest.raises(BadRequest):
            await writer.append({**fields(0), "auth_mode": "root"})
        assert (await writer.append(fields(1)))["seq"] == 1
        await writer.close()


async def test_append_outside_run_is_refused(tmp_path: Path) -> None:
    writer = _writer(tmp_path, Faults())
    with pytest.raises(AuditWriteFailed, match="not running"):
        await writer.append(fields(0))
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.close()
    with pytest.raises(AuditWriteFailed, match="not running"):
        await writer.append(fields(0))
    assert not writer.healthy


async def test_close_drains_and_signs_a_final_checkpoint(tmp_path: Path) -> None:
    seen: list[Mapping[str, Any]] = []
    writer = _writer(tmp_path, Faults(), on_checkpoint=seen.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await _append_many(writer, 7)
        await writer.drain()
        await writer.close()
    assert [cp["size"] for cp in seen] == [7]
    assert seen[0]["head_hash"] == writer.log.head_hash
    assert (tmp_path / files.LATEST).exists()


async def test_periodic_checkpoints(tmp_path: Path, autojump_clock: trio.testing.MockClock) -> None:
    got = trio.Event()
    sizes: list[int] = []

    def hook(cp: Mapping[str, Any]) -> None:
        sizes.append(cp["size"])
        got.set()

    writer = _writer(tmp_path, Faults(), on_checkpoint=hook, checkpoint_every_seconds=60)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await _append_many(writer, 3)
        await got.wait()  # the virtual clock jumps to the next tick of the timer
        assert sizes == [3]
        assert writer.latest_checkpoint is not None and writer.latest_checkpoint.size == 3
        await writer.close()
    assert sizes == [3]  # nothing new at close: no second checkpoint


async def test_checkpoints_inside_a_batch_are_reported(tmp_path: Path) -> None:
    seen: list[Mapping[str, Any]] = []
    log = open_log(tmp_path, signing_key=SIGNING, checkpoint_every=5)
    writer = AuditWriter(log, checkpoint_every_seconds=None, on_checkpoint=seen.append)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        for i in range(6):
            await writer.append(fields(i))
        assert [cp["size"] for cp in seen] == [5]
        await writer.close()
    assert [cp["size"] for cp in seen] == [5, 6]


async def test_a_failing_hook_does_not_stop_the_writer(tmp_path: Path) -> None:
    def boom(_cp: Mapping[str, Any]) -> None:
        raise RuntimeError("journald is down")

    hook: Callable[[Mapping[str, Any]], None] = boom
    writer = _writer(tmp_path, Faults(), on_checkpoint=hook)
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        await writer.append(fields(0))
        assert await writer.checkpoint_now() is not None
        assert (await writer.append(fields(1)))["seq"] == 2
        await writer.close()


async def test_a_cancelled_caller_still_learns_nothing_was_lost(tmp_path: Path) -> None:
    writer = _writer(tmp_path, Faults())
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        with trio.CancelScope() as scope:
            scope.cancel()  # already cancelled when the append is queued
            record = await writer.append(fields(0))  # shielded: completes anyway
        assert record["seq"] == 1
        await writer.close()
    assert verify_bytes(read_files(tmp_path)).ok


async def test_receipt_headers_verify_with_the_public_key(tmp_path: Path) -> None:
    from assay.core.audit.receipt import verify_receipt

    writer = _writer(tmp_path, Faults())
    async with trio.open_nursery() as nursery:
        await nursery.start(writer.run)
        record = await writer.append(fields(0))
        await writer.checkpoint_now()
        headers = writer.receipt_headers(await writer.append(fields(1)))
        receipt = verify_receipt(headers["Assay-Receipt"], SIGNING.public_key())
        assert receipt.seq == 2 and receipt.checkpoint is not None
        assert receipt.checkpoint.head_hash == record["record_hash"]
        assert writer.receipt_headers({**record, "seq": None}) == {}
        await writer.close()


def test_unknown_policy_is_refused(tmp_path: Path) -> None:
    with open_log(tmp_path) as log, pytest.raises(ValueError):
        AuditWriter(log, write_policy="yolo")  # type: ignore[arg-type]
