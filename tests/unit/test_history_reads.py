"""``HistoryReads``: concurrent history reads share thread hops without changing answers."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio

from assay.core.errors import StorageError
from assay.registry.app import HistoryReads


class FakeDB:
    def __init__(self) -> None:
        self.rows: dict[str, list[dict[str, Any]]] = {"a": [{"n": 1}], "b": [{"n": 2}]}
        self.calls: list[str] = []
        self.threads: set[int] = set()
        self.gate = threading.Event()
        self.gate.set()

    def history(self, digest: str) -> list[dict[str, Any]]:
        self.gate.wait()
        self.threads.add(threading.get_ident())
        self.calls.append(digest)
        if digest == "bad":
            raise StorageError("database write failed: boom")
        return list(self.rows.get(digest, []))


async def test_each_reader_gets_its_own_digest_and_batches_share_hops() -> None:
    db = FakeDB()
    reads = HistoryReads(db.history)
    got: dict[int, list[dict[str, Any]]] = {}

    async def one(i: int) -> None:
        got[i] = await reads.history("a" if i % 2 else "b")

    db.gate.clear()  # hold the first batch so the rest queue behind it
    async with trio.open_nursery() as nursery:
        for i in range(20):
            nursery.start_soon(one, i)
        await trio.sleep(0.05)
        db.gate.set()
    assert all(got[i] == ([{"n": 1}] if i % 2 else [{"n": 2}]) for i in range(20))
    # The first read ran alone; the 19 that queued meanwhile were read once per digest.
    assert len(db.calls) <= 3


async def test_a_read_sees_writes_made_before_it_was_queued() -> None:
    db = FakeDB()
    reads = HistoryReads(db.history)
    assert await reads.history("a") == [{"n": 1}]
    db.rows["a"] = [{"n": 1}, {"n": 3}]
    assert await reads.history("a") == [{"n": 1}, {"n": 3}]


async def test_an_error_fails_only_reads_of_its_digest() -> None:
    db = FakeDB()
    reads = HistoryReads(db.history)
    results: dict[str, object] = {}

    async def one(digest: str) -> None:
        try:
            results[digest] = await reads.history(digest)
        except StorageError as exc:
            results[digest] = exc

    db.gate.clear()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, "a")
        await trio.sleep(0.01)
        nursery.start_soon(one, "bad")
        nursery.start_soon(one, "b")
        await trio.sleep(0.05)
        db.gate.set()
    assert results["a"] == [{"n": 1}]
    assert results["b"] == [{"n": 2}]
    assert isinstance(results["bad"], StorageError)


async def test_a_cancelled_reader_does_not_stall_the_queue() -> None:
    db = FakeDB()
    reads = HistoryReads(db.history)
    db.gate.clear()

    async def release() -> None:
        await trio.sleep(0.05)
        db.gate.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reads.history, "a")  # leads, blocked in the thread
        nursery.start_soon(release)
        await trio.sleep(0.01)
        with trio.move_on_after(0.01):
            await reads.history("b")  # queued; its wait is shielded, so it completes
    with trio.fail_after(5):
        assert await reads.history("a") == [{"n": 1}]


@pytest.mark.parametrize("n", [1, 50])
async def test_many_sequential_reads(n: int) -> None:
    db = FakeDB()
    reads = HistoryReads(db.history)
    for _ in range(n):
        assert await reads.history("b") == [{"n": 2}]
    assert len(db.calls) == n
