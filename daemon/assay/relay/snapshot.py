"""Read-only snapshots of source files, reloaded and swapped atomically.

Why: a request must see one snapshot from start to finish. Each table's current snapshot
is one immutable object behind one reference; a reload decodes the new file off the event
loop and then replaces that reference in a single assignment, so a request that took the
old object keeps it and the next one gets the new. A failed reload keeps the old snapshot
serving, records the error for ``/readyz`` and logs it.

Sources are opened ``O_RDONLY`` and never locked or written. The digest is the SHA-256 of
exactly the bytes decoded, read under a size cap; if the file changes while it is being
read (in-place rewrite) the reload is refused and retried on the next poll.

One grouping per population is checked here by what the sources are, at startup and at
every reload: an aggregated table whose file (device and inode), bytes or primary keys
are another aggregated table's fails the startup, or has its reload refused (the old
snapshot keeps serving), since two groupings of one population difference each other.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import trio

from assay.core.errors import AssayError, StorageError
from assay.relay.config import SourceIdentity, Table, config_error, population_problems
from assay.relay.decode import SourceInvalid, decode
from assay.relay.planner import canonical
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
    #: SHA-256 of the sorted primary keys, for aggregated tables (who the rows are).
    records: str | None = None

    @property
    def rows(self) -> int:
        return int(self.data.num_rows)

    def identity(self, real_path: str | None = None) -> SourceIdentity:
        return SourceIdentity((self.stamp[0], self.stamp[1]), real_path, self.digest,
                              self.records)  # fmt: skip


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
    #: Config paths of the aggregates over this table (one grouping per population).
    aggregated_by: tuple[str, ...] = ()

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


def records_digest(index: Mapping[Any, int]) -> str:
    """SHA-256 over the sorted primary keys, each length-prefixed: the same records give
    the same digest whatever the file's format, column order or row order."""
    h = hashlib.sha256(b"assay.relay.records.v1\0")
    for key in sorted(str(canonical(k)) for k in index):
        raw = key.encode()
        h.update(len(raw).to_bytes(8, "big") + raw)
    return "sha256:" + h.hexdigest()


def load(state: TableState, generation: int) -> Snapshot:
    """Blocking: read, digest, decode and index one table (run in a worker thread)."""
    data, stamp = read_source(state.path, state.max_bytes, state.where)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if state.snapshot is not None and state.snapshot.digest == digest:
        return replace(state.snapshot, stamp=stamp)  # same bytes: only the stamp moved
    table = decode(data, state.spec, where=state.where)
    del data
    index = build_index(table, state.spec.primary_key)
    records = records_digest(index) if state.aggregated_by else None
    return Snapshot(table, index, digest, stamp, time.time(), generation, records)


def _config_order(where: str) -> list[int]:
    """``datasets[10].aggregates[0]`` after ``datasets[2]...``: the config's own order."""
    return [int(n) for n in re.findall(r"[0-9]+", where)]


def _identity_now(state: TableState) -> SourceIdentity | None:
    """What another aggregated table is now: the file its path resolves to at this moment
    (it may have been replaced since its load), and the bytes and records it serves."""
    if state.snapshot is None:
        return None
    served = state.snapshot.identity()
    real = os.path.realpath(state.path)
    try:
        info = os.stat(real)
    except OSError:
        return replace(served, file=None, real_path=real)
    return replace(served, file=(info.st_dev, info.st_ino), real_path=real)


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
        """Startup: every table must load, or the relay does not start (fail closed), and
        no two aggregates may group one population."""
        for state in self._tables.values():
            self._generation += 1
            state.snapshot = load(state, self._generation)
            log.info(
                "loaded %s: %d rows, %s", state.where, state.snapshot.rows, state.snapshot.digest
            )
        sources = [
            (where, state.where, state.snapshot.identity(os.path.realpath(state.path)))
            for state in self._tables.values()
            if state.snapshot is not None
            for where in state.aggregated_by
        ]
        problems = population_problems(sorted(sources, key=lambda s: _config_order(s[0])))
        if problems:
            raise config_error("sources", problems)

    def _population_check(self, state: TableState, snap: Snapshot) -> None:
        """Blocking: refuse a reload that makes this table another aggregate's population."""
        if not state.aggregated_by:
            return
        mine = snap.identity(os.path.realpath(state.path))
        for other in self._tables.values():
            theirs = _identity_now(other) if other is not state and other.aggregated_by else None
            why = mine.same_population(theirs) if theirs is not None else None
            if why is not None:
                raise SourceInvalid(
                    f"{state.where}: reload refused: the source is now {why} {other.where}, "
                    f"the population {other.aggregated_by[0]} already aggregates; two "
                    "groupings of one population let a caller recover suppressed cells"
                )

    def _load_checked(self, state: TableState, generation: int) -> Snapshot:
        snap = load(state, generation)
        self._population_check(state, snap)
        return snap

    async def reload(
        self, state: TableState, *, before_swap: Callable[[Snapshot], Awaitable[None]] | None = None
    ) -> bool:
        """Reload one table; True when a new snapshot was swapped in.

        ``before_swap`` runs once the new snapshot is loaded and differs, before it
        serves: an operator's reload writes its record there, so that a reload whose
        record cannot be written (it raises) swaps nothing.
        """
        async with state.lock:
            state.last_attempt = time.time()
            self._generation += 1
            generation = self._generation
            try:
                snap = await trio.to_thread.run_sync(self._load_checked, state, generation)
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
            if before_swap is not None:
                await before_swap(snap)
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
