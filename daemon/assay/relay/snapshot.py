"""Read-only snapshots of source files, reloaded and swapped atomically.

Why: a request must see one snapshot from start to finish. Each table's current snapshot
is one immutable object behind one reference; a reload decodes the new file off the event
loop and then replaces that reference in a single assignment, so a request that took the
old object keeps it and the next one gets the new. A failed reload keeps the old snapshot
serving, records the error for ``/readyz`` and logs it.

Sources are opened ``O_RDONLY`` and never locked or written. The digest is the SHA-256 of
exactly the bytes decoded, read under a size cap; if the file changes while it is being
read (in-place rewrite) the reload is refused and retried on the next poll.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import trio

from assay.core.errors import AssayError, StorageError
from assay.relay.config import Table
from assay.relay.decode import SourceInvalid, decode
from assay.relay.query import build_index

log = logging.getLogger("assay.relay.snapshot")

Stamp = tuple[int, int, int, int]


@dataclass(frozen=True)
class Snapshot:
    """One table as loaded: immutable, shared by every request that took it."""

    data: pa.Table
    index: Mapping[Any, int]
    digest: str
    stamp: Stamp
    loaded_at: float
    generation: int

    @property
    def rows(self) -> int:
        return int(self.data.num_rows)


@dataclass
class TableState:
    dataset: str
    spec: Table
    path: Path
    max_bytes: int
    snapshot: Snapshot | None = None
    last_error: str | None = None
    last_attempt: float | None = None
    failures: int = 0
    lock: trio.Lock = field(default_factory=trio.Lock)

    @property
    def where(self) -> str:
        return f"{self.dataset}.{self.spec.id}"


def stamp_of(info: os.stat_result) -> Stamp:
    return (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)


def source_stamp(path: Path) -> Stamp | None:
    try:
        return stamp_of(os.stat(path))
    except OSError:
        return None


def read_source(path: Path, max_bytes: int, where: str) -> tuple[bytes, Stamp]:
    """The file's bytes and stamp, read-only, bounded, and consistent with one version."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise SourceInvalid(f"{where}: source {path} unreadable: {exc.strerror}") from None
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise SourceInvalid(f"{where}: source {path} is not a regular file")
        if before.st_size > max_bytes:
            raise SourceInvalid(
                f"{where}: source is {before.st_size} bytes, over the cap of {max_bytes}"
            )
        chunks: list[bytes] = []
        total = 0
        while True:
            chunk = os.read(fd, 1024 * 1024)
            if not chunk:
                break
            total += len(chunk)
            if total > max_bytes:
                raise SourceInvalid(f"{where}: source grew past the cap of {max_bytes} bytes")
            chunks.append(chunk)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if stamp_of(before) != stamp_of(after) or total != after.st_size:
        raise SourceInvalid(f"{where}: source changed while being read; will retry")
    return b"".join(chunks), stamp_of(after)


def load(state: TableState, generation: int) -> Snapshot:
    """Blocking: read, digest, decode and index one table (run in a worker thread)."""
    data, stamp = read_source(state.path, state.max_bytes, state.where)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if state.snapshot is not None and state.snapshot.digest == digest:
        return Snapshot(
            state.snapshot.data, state.snapshot.index, digest, stamp, state.snapshot.loaded_at,
            state.snapshot.generation,
        )  # fmt: skip
    table = decode(data, state.spec, where=state.where)
    del data
    index = build_index(table, state.spec.primary_key)
    return Snapshot(table, index, digest, stamp, time.time(), generation)


class SnapshotStore:
    """Every table's current snapshot, behind one reference each."""

    def __init__(self, tables: list[TableState]) -> None:
        self._tables: dict[tuple[str, str], TableState] = {
            (t.dataset, t.spec.id): t for t in tables
        }
        self._generation = 0

    def tables(self) -> list[TableState]:
        return list(self._tables.values())

    def get(self, dataset: str, table: str) -> Snapshot:
        """The current snapshot; take it once per request and use only that one."""
        snap = self._tables[(dataset, table)].snapshot
        if snap is None:
            raise StorageError(f"table {dataset}.{table} is not loaded", code="relay.not_loaded")
        return snap

    def load_all_blocking(self) -> None:
        """Startup: every table must load, or the relay does not start (fail closed)."""
        for state in self._tables.values():
            self._generation += 1
            state.snapshot = load(state, self._generation)
            log.info(
                "loaded %s: %d rows, %s", state.where, state.snapshot.rows, state.snapshot.digest
            )

    async def reload(self, state: TableState) -> bool:
        """Reload one table; True when a new snapshot was swapped in."""
        async with state.lock:
            state.last_attempt = time.time()
            self._generation += 1
            generation = self._generation
            try:
                snap = await trio.to_thread.run_sync(load, state, generation)
            except (AssayError, OSError, pa.ArrowException, MemoryError) as exc:
                state.failures += 1
                state.last_error = exc.detail if isinstance(exc, AssayError) else str(exc)[:300]
                log.error(  # noqa: TRY400 - the reason is the message; no traceback wanted
                    "reload of %s failed, still serving %s: %s",
                    state.where,
                    state.snapshot.digest if state.snapshot else "nothing",
                    state.last_error,
                )
                return False
            state.last_error = None
            old = state.snapshot
            if old is not None and old.digest == snap.digest:
                state.snapshot = snap  # same bytes: only the stamp moved
                return False
            state.snapshot = snap  # the one atomic swap
            log.info("reloaded %s: %d rows, %s", state.where, snap.rows, snap.digest)
            return True

    async def reload_all(self) -> None:
        for state in self.tables():
            await self.reload(state)

    async def watch(self, state: TableState) -> None:
        """Poll by the table's refresh mode: ``mtime`` on change, ``interval`` on a timer."""
        mode = state.spec.refresh.mode
        if mode == "manual":
            return
        interval = state.spec.refresh.interval_seconds
        seen = state.snapshot.stamp if state.snapshot else None
        while True:
            await trio.sleep(interval)
            if mode == "interval":
                await self.reload(state)
                continue
            stamp = await trio.to_thread.run_sync(source_stamp, state.path)
            if stamp != seen:  # retried only when the file moves again, so no log storm
                seen = stamp
                await self.reload(state)

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for state in self._tables.values():
            snap = state.snapshot
            out[state.where] = {
                "ok": snap is not None,
                "stale": state.last_error is not None,
                "digest": snap.digest if snap else None,
                "loaded_at": snap.loaded_at if snap else None,
                "last_error": state.last_error,
                "failures": state.failures,
            }
        return out
