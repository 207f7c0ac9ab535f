"""Read-only snapshots of source files, reloaded and swapped atomically.

Why: a request must see one snapshot from start to finish. Each table's current snapshot
is one immutable object behind one reference; a reload decodes the new file off the event
loop and then replaces that reference in a single assignment, so a request that took the
old object keeps it and the next one gets the new. A failed reload keeps the old snapshot
serving, records the error for ``/readyz`` and logs it.

Sources are opened ``O_RDONLY`` and never locked or written. The digest is the SHA-256 of
exactly the bytes decoded, read under a size cap; if the file changes while it is being
read (in-place rewrite) the reload is refused and retried on the next poll.

A Postgres source (``pgread``) is read by COPY through a read-only session under the
same cap and decoded by the same strict schema; its refresh polls ``change_token_sql``
(the token moves: reload), and a live table keeps no snapshot at all (``pglive``).

One grouping per population is checked here by what the sources are, at startup and at
every reload: an aggregated table whose file (device and inode), bytes or identifier
sets are another aggregated table's, or whose rows largely are (the estimate), fails the
startup, or has its reload refused (the old snapshot keeps serving), since two groupings
of one population difference each other (``assay.relay.population`` says which evidence
is exact and which estimated).
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import trio

from assay.core.errors import AssayError, StorageError
from assay.relay import population
from assay.relay.config import Table, config_error
from assay.relay.conflicts import Conflict, problem
from assay.relay.decode import SourceInvalid, decode
from assay.relay.pglive import LivePool, LiveTag, check_live
from assay.relay.pgread import PgBinding, change_token, read_snapshot
from assay.relay.population import Fingerprint, SourceIdentity, population_problems
from assay.relay.query import build_index
from assay.relay.xlsxsource import decode_xlsx

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
    #: Who the rows are (``assay.relay.population``), for tables that are compared.
    fingerprint: Fingerprint | None = None
    #: A database source's server, database and relation (it has no file).
    locator: str | None = None
    #: ``change_token_sql``'s value, read just before this snapshot's COPY.
    token: str | None = None

    @property
    def rows(self) -> int:
        return int(self.data.num_rows)

    def identity(self, real_path: str | None = None) -> SourceIdentity:
        ids = self.fingerprint.identifiers if self.fingerprint is not None else None
        if self.locator is not None:  # a database source: no file, the relation instead
            return SourceIdentity(None, None, self.digest, ids, self.locator)
        return SourceIdentity((self.stamp[0], self.stamp[1]), real_path, self.digest, ids)


@dataclass
class TableState:
    dataset: str
    spec: Table
    #: The source file; None for a Postgres source (``pg``).
    path: Path | None
    max_bytes: int
    snapshot: Snapshot | None = None
    last_error: str | None = None
    #: The stable code of the last failed load (e.g. ``relay.xlsx_formula``).
    last_error_code: str | None = None
    last_attempt: float | None = None
    failures: int = 0
    lock: trio.Lock = field(default_factory=trio.Lock)
    #: Config paths of the aggregates over this table (one grouping per population).
    aggregated_by: tuple[str, ...] = ()
    #: API keys that may aggregate one of these two tables and read the other: refused
    #: if their contents are one population (``assay.relay.conflicts``).
    guards: tuple[Conflict, ...] = ()
    pg: PgBinding | None = None
    #: A live table's sessions (set at startup; a live table has no snapshot).
    pool: LivePool | None = None

    @property
    def compared(self) -> bool:
        """Whether this table's population is compared with another's (fingerprinted)."""
        return bool(self.aggregated_by or self.guards)

    @property
    def where(self) -> str:
        return f"{self.dataset}.{self.spec.id}"

    @property
    def live(self) -> bool:
        """Answered by the database per request (``pglive``); never snapshotted."""
        return self.pg is not None and self.pg.source.mode == "live"

    def real_path(self) -> str | None:
        return None if self.path is None else os.path.realpath(self.path)


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
    token: str | None = None
    locator: str | None = None
    if state.pg is not None:
        read = read_snapshot(state.pg, state.spec, state.max_bytes, state.where)
        data, token, locator = read.data, read.token, read.locator
        stamp: Stamp = (0, 0, 0, len(data))
    else:
        assert state.path is not None
        data, stamp = read_source(state.path, state.max_bytes, state.where)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if state.snapshot is not None and state.snapshot.digest == digest:
        # Same bytes: only the stamp (and the token read before them) moved.
        return replace(state.snapshot, stamp=stamp, token=token, locator=locator)
    if state.spec.source.resolved_format() == "xlsx":
        table = decode_xlsx(data, state.spec, where=state.where, max_bytes=state.max_bytes)
    else:
        table = decode(data, state.spec, where=state.where)
    del data
    index = build_index(table, state.spec.primary_key)
    fp = _fingerprint(table, state.where) if state.compared else None
    return Snapshot(table, index, digest, stamp, time.time(), generation, fp, locator, token)


def _fingerprint(table: pa.Table, where: str) -> Fingerprint:
    try:
        return population.fingerprint(table)
    except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
        # Fail closed: a population that cannot be compared is not served as distinct.
        raise SourceInvalid(
            f"{where}: its population could not be compared ({type(exc).__name__})", path=where
        ) from None


def _overlap(mine: Snapshot, theirs: Snapshot, where: str) -> str | None:
    """Blocking: the estimated-overlap reason (``population.overlap_reason``), if any."""
    if mine.fingerprint is None or theirs.fingerprint is None:
        return None
    try:
        return population.overlap_reason(
            mine.data, mine.fingerprint, theirs.data, theirs.fingerprint
        )
    except (pa.ArrowException, ValueError, TypeError, OverflowError) as exc:
        raise SourceInvalid(
            f"{where}: its population could not be compared ({type(exc).__name__})", path=where
        ) from None


def failure_reason(where: str, exc: BaseException) -> str:
    """Why a reload failed, for the log and ``/readyz``: the relay's own reasons (which
    never quote a value), else a fixed sentence by kind. Never the text of an OS or
    pyarrow error, which may quote a path's bytes or a row."""
    if isinstance(exc, AssayError):
        return exc.detail
    if isinstance(exc, MemoryError):
        return f"{where}: out of memory while loading the source"
    if isinstance(exc, OSError):
        name = errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        return f"{where}: the source could not be read ({name})"
    return f"{where}: the source could not be decoded ({type(exc).__name__})"


def _config_order(where: str) -> list[int]:
    """``datasets[10].aggregates[0]`` after ``datasets[2]...``: the config's own order."""
    return [int(n) for n in re.findall(r"[0-9]+", where)]


def _identity_now(state: TableState) -> SourceIdentity | None:
    """What another aggregated table is now: the file its path resolves to at this moment
    (it may have been replaced since its load), and the bytes and records it serves."""
    if state.snapshot is None:
        return None
    served = state.snapshot.identity()
    real = state.real_path()
    if real is None:
        return served
    try:
        info = os.stat(real)
    except OSError:
        return replace(served, file=None, real_path=real)
    return replace(served, file=(info.st_dev, info.st_ino), real_path=real)


Tagger = Callable[[str, str, str], str]

_TAG_DOMAIN = b"assay.relay.snapshot-tag.v1\x00"


def snapshot_tagger(key: bytes) -> Tagger:
    """``(dataset, table, digest)`` to the snapshot name callers see.

    Why keyed: the digest is the SHA-256 of the source file, so handed to a caller it
    confirms any guess of the whole file (suppressed cells included) and tells every
    refresh of it apart. The tag is HMAC-SHA256 under a key of its own derived from the
    relay's key, over the dataset, the table and the digest: it still changes with every
    new snapshot and names one snapshot in answers, signed claims and the audit, but
    without the key it confirms nothing, and one file under two tables gives two tags.
    The raw digest stays in the audit record and the operator's log.
    """

    def tag(dataset: str, table: str, digest: str) -> str:
        msg = _TAG_DOMAIN + b"\x00".join(s.encode() for s in (dataset, table, digest))
        return "snap:" + hmac.new(key, msg, hashlib.sha256).hexdigest()

    return tag


class SnapshotStore:
    """Every table's current snapshot, behind one reference each."""

    def __init__(self, tables: list[TableState], *, tag: Tagger | None = None) -> None:
        self._tables: dict[tuple[str, str], TableState] = {
            (t.dataset, t.spec.id): t for t in tables
        }
        self._generation = 0
        #: Without a key, a random one: no raw digest is ever published.
        self._tag = tag or snapshot_tagger(secrets.token_bytes(32))

    def tag(self, dataset: str, table: str, snap: Snapshot | LiveTag) -> str:
        """The name of ``snap`` (or of a live table) that callers see (``snapshot_tagger``)."""
        return self._tag(dataset, table, snap.digest)

    def tables(self) -> list[TableState]:
        return list(self._tables.values())

    def pool(self, dataset: str, table: str) -> LivePool | None:
        """A live table's pool, or None for a snapshotted table."""
        return self._tables[(dataset, table)].pool

    def close(self) -> None:
        """Blocking: close every live table's idle sessions."""
        for state in self._tables.values():
            if state.pool is not None:
                state.pool.close()

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
            if state.pg is not None and state.live:
                check_live(state.pg, state.spec, state.where)
                state.pool = LivePool(state.pg, state.spec, state.where)
                log.info("%s is live from %s", state.where, state.pg)
                continue
            self._generation += 1
            state.snapshot = load(state, self._generation)
            log.info(
                "loaded %s: %d rows, %s", state.where, state.snapshot.rows, state.snapshot.digest
            )
        sources = [
            (where, state.where, state.snapshot.identity(state.real_path()))
            for state in self._tables.values()
            if state.snapshot is not None
            for where in state.aggregated_by
        ]
        ordered = sorted(sources, key=lambda s: _config_order(s[0]))
        problems = population_problems(ordered)
        if problems:
            raise config_error("sources", problems)
        # Then the estimate, pair by pair: subsets, supersets, overlapping extracts.
        states = {state.where: state for state in self._tables.values()}
        for i, (where, label, _ident) in enumerate(ordered):
            for prev_where, prev_label, _prev in ordered[:i]:
                mine, theirs = states[label].snapshot, states[prev_label].snapshot
                assert mine is not None and theirs is not None
                why = _overlap(mine, theirs, label)
                if why is not None:
                    problems.append(population.same_population_problem(
                        where, label, why, prev_label, prev_where))  # fmt: skip
                    break
        if problems:
            raise config_error("sources", problems)
        # And no API key both aggregates a population and reads it from another file.
        for state in self._tables.values():
            for guard in state.guards:
                if (state.dataset, state.spec.id) == guard.aggregate_table:
                    why = self._guard_reason(guard, state, state.snapshot)
                    if why is not None:
                        problems.append(why)
        if problems:
            raise config_error("auth", problems)

    def _guard_reason(
        self, guard: Conflict, state: TableState, snap: Snapshot | None
    ) -> str | None:
        """Blocking: the key's problem if ``snap`` (``state``'s, new or current) and the
        guard's other table are one population, else None."""
        aggregated = (state.dataset, state.spec.id) == guard.aggregate_table
        other_key = guard.entity_table if aggregated else guard.aggregate_table
        other = self._tables.get(other_key)
        if snap is not None and other is not None and other.live:
            # A live table keeps no rows to compare: fail closed, not "distinct".
            return problem(guard, f"{other.where}, a live table whose rows cannot be compared "
                           f"with the aggregate's table {state.where}")  # fmt: skip
        if snap is None or other is None or other.snapshot is None:
            return None
        theirs = _identity_now(other)
        assert theirs is not None
        why = snap.identity(state.real_path()).same_population(theirs)
        if why is None:
            why = _overlap(snap, other.snapshot, state.where)
        if why is None:
            return None
        agg_where, ent_where = (
            (state.where, other.where) if aggregated else (other.where, state.where)
        )
        return problem(guard, f"{ent_where}, which is {why} the aggregate's table {agg_where}")

    def _population_check(self, state: TableState, snap: Snapshot) -> None:
        """Blocking: refuse a reload that makes this table another aggregate's population,
        or the population of an aggregate that a key reading this table may ask."""
        for guard in state.guards:
            why = self._guard_reason(guard, state, snap)
            if why is not None:
                raise SourceInvalid(f"{state.where}: reload refused: {why.split(': ', 1)[1]}")
        if not state.aggregated_by:
            return
        mine = snap.identity(state.real_path())
        for other in self._tables.values():
            theirs = _identity_now(other) if other is not state and other.aggregated_by else None
            why = mine.same_population(theirs) if theirs is not None else None
            if why is None and theirs is not None and other.snapshot is not None:
                why = _overlap(snap, other.snapshot, state.where)
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
        """Reload one table; True when a new snapshot was swapped in. A live table has no
        snapshot to reload (SIGHUP or a reload route must not COPY it whole).

        ``before_swap`` runs once the new snapshot is loaded and differs, before it
        serves: an operator's reload writes its record there, so that a reload whose
        record cannot be written (it raises) swaps nothing.
        """
        if state.live:
            return False
        async with state.lock:
            state.last_attempt = time.time()
            self._generation += 1
            generation = self._generation
            try:
                snap = await trio.to_thread.run_sync(self._load_checked, state, generation)
            except (AssayError, OSError, pa.ArrowException, MemoryError) as exc:
                state.failures += 1
                state.last_error = failure_reason(state.where, exc)
                state.last_error_code = exc.code if isinstance(exc, AssayError) else None
                log.error(  # noqa: TRY400 - the reason is the message; no traceback wanted
                    "reload of %s failed, still serving %s: %s",
                    state.where,
                    state.snapshot.digest if state.snapshot else "nothing",
                    state.last_error,
                )
                return False
            state.last_error = state.last_error_code = None
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
        if mode == "manual" or state.live:
            return
        interval = state.spec.refresh.interval_seconds
        if state.pg is not None and mode == "mtime":
            await self._watch_token(state, state.pg, interval)
            return
        seen = state.snapshot.stamp if state.snapshot else None
        while True:
            await trio.sleep(interval)
            if mode == "interval":
                await self.reload(state)
                continue
            assert state.path is not None
            stamp = await trio.to_thread.run_sync(source_stamp, state.path)
            if stamp != seen:  # retried only when the file moves again, so no log storm
                seen = stamp
                await self.reload(state)

    async def _watch_token(self, state: TableState, pg: PgBinding, interval: float) -> None:
        """``mtime`` for a database: reload when ``change_token_sql``'s value is not the one
        read just before the served snapshot's COPY. An unreadable token keeps the snapshot
        serving, marked stale and logged once; a token whose reload failed is not retried
        until it moves again (no log storm)."""
        tried: str | None = None
        while True:
            await trio.sleep(interval)
            try:
                token = await trio.to_thread.run_sync(change_token, pg, state.where)
            except AssayError as exc:
                if state.last_error != exc.detail:
                    log.error("change token of %s unreadable, still serving %s: %s",  # noqa: TRY400
                              state.where, state.snapshot.digest if state.snapshot else "nothing",
                              exc.detail)  # fmt: skip
                state.last_error = exc.detail
                state.failures += 1
                tried = None
                continue
            served = state.snapshot.token if state.snapshot is not None else None
            if token == served:
                state.last_error = None  # answering again, and nothing moved meanwhile
            elif token != tried and not await self.reload(state) and state.last_error:
                tried = token

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for state in self._tables.values():
            snap = state.snapshot
            live_ok = state.pool is not None and state.pool.last_error is None
            out[state.where] = {
                "ok": snap is not None or live_ok,
                "stale": state.last_error is not None,
                "snapshot": self.tag(state.dataset, state.spec.id, snap) if snap else None,
                "loaded_at": snap.loaded_at if snap else None,
                "last_error": state.pool.last_error if state.pool else state.last_error,
                "last_error_code": None if state.pool else state.last_error_code,
                "failures": state.pool.failures if state.pool else state.failures,
            }
        return out
