"""``AuditLog``: the append-only, HMAC-chained log files (sync and blocking).

Callers on an event loop run it in a worker thread (``writer.AuditWriter`` does). It is
safe across threads (one mutex) and across processes (``flock`` on ``audit.lock`` held for
each batch): the daemon and offline CLI commands such as ``token create`` share one chain.

Durability: ``append_batch`` seals records, writes all lines with one ``write`` and makes
them durable with one ``fsync`` (group commit). After it returns, the records survive a
crash. If ``write`` fails the partial bytes are cut off again under the lock; if ``fsync``
fails the outcome is unknown (the kernel may have dropped the dirty pages) so the instance
refuses every later append ("poisoned") until the process reopens the log.

Opening never repairs: a torn last line (a crash mid-write) raises ``AuditNeedsRecovery``
and ``AuditLog.recover`` (``assay audit recover``) moves it to ``audit.torn.<ts>``, cuts
it off and appends an ``audit.recover`` record saying what was removed.

Merkle state: each line of ``checkpoints.jsonl`` carries, unsigned, the compact range and
the file position it covers. Opening restores the latest one (after checking the record
at that position is the checkpoint's head) and streams only the records written since;
if anything does not match it falls back to streaming the whole log once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from assay.core.atomic import atomic_write, fsync_dir
from assay.core.audit import files, reader
from assay.core.audit.chain import Chain, Record, canonical, format_ts, seal_line
from assay.core.audit.checkpoint import Checkpoint as Checkpoint
from assay.core.audit.checkpoint import InclusionProof, sign_checkpoint
from assay.core.audit.keys import hmac_key_from_bytes
from assay.core.audit.merkle import CompactRange
from assay.core.audit.reader import Position
from assay.core.audit.receipt import Receipt, make_receipt
from assay.core.audit.schema import _LOG_ID, check_fields, make_fields
from assay.core.audit.verify import StreamVerifier, inspect_line
from assay.core.errors import AuditNeedsRecovery, AuditWriteFailed, BadRequest, ChainBroken

log = logging.getLogger("assay.audit")

DEFAULT_ROTATE_BYTES = 64 * 1024 * 1024


def utc_now() -> str:
    return format_ts(datetime.now(UTC))


@dataclass
class LogStats:
    """Counters for tests, benchmarks and metrics (``fsyncs`` counts log-file fsyncs)."""

    batches: int = 0
    records: int = 0
    fsyncs: int = 0
    checkpoints: int = 0
    rotations: int = 0


class AuditLog:
    """One audit directory. Construction opens it (taking the lock briefly).

    ``checkpoint_every``: sign a checkpoint after this many records (needs
    ``signing_key``; without one, checkpoints are left to a process that has it).
    ``fsync``/``write`` are injectable so tests can count fsyncs or fail I/O.
    """

    def __init__(
        self,
        directory: Path | str,
        hmac_key: bytes,
        *,
        log_id: str = "assay",
        signing_key: Ed25519PrivateKey | None = None,
        rotate_bytes: int = DEFAULT_ROTATE_BYTES,
        checkpoint_every: int = 1000,
        clock: Callable[[], str] = utc_now,
        fsync: Callable[[int], None] = os.fsync,
        write: Callable[[int, bytes | memoryview], int] = os.write,
        _recover: bool = False,
    ) -> None:
        if not _LOG_ID.match(log_id):
            raise BadRequest(f"log_id {log_id!r} must match [A-Za-z0-9._-]{{1,64}}")
        self.directory = Path(directory)
        self.log_id = log_id
        self._key = hmac_key_from_bytes(hmac_key)
        self._chain = Chain(self._key)
        self._signing_key = signing_key
        self._rotate_bytes = rotate_bytes
        self._checkpoint_every = checkpoint_every
        self._clock = clock
        self._fsync = fsync
        self._write = write
        self._mutex = threading.Lock()
        self.stats = LogStats()
        self.poisoned: str | None = None
        self.recovered: Record | None = None
        self._latest: Checkpoint | None = None
        self._cp_file_size = -1
        self._fd = -1
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._lock_fd = files.open_nofollow(self.directory / files.LOCK, os.O_RDWR | os.O_CREAT)
            with self._flock():
                self._open_locked(_recover)
        except OSError as exc:  # a symlink (ELOOP), permissions, a full disk
            self.close()
            raise AuditWriteFailed(f"cannot open the audit log in {self.directory}: {exc}") from exc
        except BaseException:
            self.close()
            raise

    # -- properties ---------------------------------------------------------------------

    @property
    def head_seq(self) -> int:
        return self._head_seq

    @property
    def head_hash(self) -> str:
        return self._head_hash

    @property
    def latest_checkpoint(self) -> Checkpoint | None:
        return self._latest

    @property
    def can_checkpoint(self) -> bool:
        """Whether this process holds the signing key (offline CLI appends may not)."""
        return self._signing_key is not None

    @property
    def merkle_root(self) -> str:
        return self._range.root().hex()

    def writable(self) -> bool:
        return self.poisoned is None and self._fd >= 0 and os.access(self.directory, os.W_OK)

    # -- open ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _flock(self) -> Iterator[None]:
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _open_current(self) -> None:
        idx = files.rotated_indexes(self.directory)
        self._segment = idx[-1] + 1 if idx else 1
        fd = files.open_nofollow(
            self.directory / files.CURRENT, os.O_RDWR | os.O_APPEND | os.O_CREAT
        )
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise AuditWriteFailed(f"{files.CURRENT} is not a regular file")
        if stat.S_IMODE(info.st_mode) != 0o600:
            os.fchmod(fd, 0o600)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._ino, self._known_size = fd, info.st_ino, info.st_size

    def _open_locked(self, recover: bool) -> None:
        self._open_current()
        if recover:
            self._recover_tail_locked()
        self._head_seq, self._head_hash = reader.find_head(
            self.directory, self._fd, self._known_size, self._parse
        )
        self._range = self._restore_range()
        self._refresh_latest()
        if self.recovered is not None:
            self.recovered = self._append_locked([self.recovered])[0]

    def _parse(self, line: bytes) -> dict[str, Any] | None:
        """Parse and authenticate one line: None if unparseable, ChainBroken if forged."""
        rec, problem = inspect_line(self._chain, line)
        if problem is None:
            return dict(rec)
        if problem[0] == "malformed_line":
            return None
        raise ChainBroken(f"audit head record does not authenticate ({problem[1]}): "
                          "wrong HMAC key, or the log was tampered with")  # fmt: skip

    def _segment_name(self, index: int) -> str:
        return files.CURRENT if index == self._segment else files.rotated_name(index)

    def _restore_range(self) -> CompactRange:
        public = self._signing_key.public_key() if self._signing_key is not None else None
        saved = reader.saved_state(self.directory, log_id=self.log_id, head_seq=self._head_seq,
                                   segment=self._segment, parse=self._parse,
                                   public_key=public)  # fmt: skip
        cr, segment, offset = saved if saved is not None else (CompactRange(), 1, 0)
        for line in reader.lines_from(self.directory, segment, offset, self._segment,
                                      self._fd, self._known_size):  # fmt: skip
            cr.push_data(line)
        if cr.size != self._head_seq:
            raise ChainBroken(f"the log holds {cr.size} lines but its head is seq "
                              f"{self._head_seq}; run `assay audit verify`")  # fmt: skip
        return cr

    def _refresh_latest(self) -> None:
        try:
            size = os.stat(self.directory / files.CHECKPOINTS).st_size
        except FileNotFoundError:
            size = 0
        if size != self._cp_file_size:
            latest = files.read_latest_checkpoint(self.directory)
            self._latest = latest[0] if latest else None
            self._cp_file_size = size

    # -- another process appended or rotated ------------------------------------------

    def _sync_locked(self) -> None:
        """Catch up with lines other processes appended (or rotated) since our last batch."""
        try:
            ino = os.stat(self.directory / files.CURRENT, follow_symlinks=False).st_ino
        except FileNotFoundError:
            ino = -1
        if ino != self._ino:  # rotated elsewhere: finish our old file and any rotated since
            self._ingest(self._fd, os.fstat(self._fd).st_size)
            old = self._segment
            self._open_current()
            for index in range(old + 1, self._segment):
                fd = os.open(self.directory / files.rotated_name(index), files.O_READ)
                try:
                    self._known_size = 0
                    self._ingest(fd, os.fstat(fd).st_size)
                finally:
                    os.close(fd)
            self._known_size = 0
        self._ingest(self._fd, os.fstat(self._fd).st_size)
        self._refresh_latest()

    def _ingest(self, fd: int, size: int) -> None:
        if size == self._known_size:
            return
        data = files.pread_all(fd, self._known_size, size)
        if not data.endswith(b"\n"):
            raise AuditNeedsRecovery("another process left a torn write in the audit log; "
                                     f"run `assay audit recover {self.directory}`")  # fmt: skip
        v = StreamVerifier(self._key, start_seq=self._head_seq, start_hash=self._head_hash)
        v.feed(data)
        report = v.finish()
        if not report.ok:
            raise ChainBroken(
                f"records appended by another process do not chain: {report.breaks[0]}"
            )
        for line in data[:-1].split(b"\n"):
            self._range.push_data(line)
        self._known_size = size
        self._head_seq, self._head_hash = report.head_seq, report.head_hash

    # -- append -------------------------------------------------------------------------

    def append(self, fields: Mapping[str, Any]) -> Record:
        return self.append_batch([fields])[0]

    def append_batch(
        self, batch: Sequence[Mapping[str, Any]], *, validated: bool = False
    ) -> list[Record]:
        """Seal, write and fsync ``batch`` as one group commit; durable on return.

        ``BadRequest`` (a malformed record) fails before any I/O. ``AuditWriteFailed``
        means nothing was acknowledged; after an fsync failure the records may still exist.
        ``validated``: every item is already a ``check_fields`` result (the writer checks
        each caller's fields at its edge, so one bad record never fails a whole batch).
        """
        checked = [dict(f) for f in batch] if validated else [check_fields(f) for f in batch]
        if not checked:
            return []
        with self._mutex:
            if self._fd < 0:
                raise AuditWriteFailed("audit log is closed")
            if self.poisoned is not None:
                raise AuditWriteFailed(f"audit log refuses writes: {self.poisoned}")
            try:
                with self._flock():
                    self._sync_locked()
                    return self._append_locked(checked)
            except OSError as exc:  # reading another process's lines, rotating, ...
                raise AuditWriteFailed(f"audit append failed: {exc}") from exc

    def _append_locked(self, checked: list[dict[str, Any]]) -> list[Record]:
        if self._known_size >= self._rotate_bytes:
            self._rotate_locked()
        ts = self._clock()
        seq, prev = self._head_seq, self._head_hash
        records: list[Record] = []
        lines: list[bytes] = []
        for fields in checked:
            seq += 1
            fields["log_id"] = self.log_id
            rec, line = seal_line(self._chain, prev, seq, ts, fields)
            prev = rec["record_hash"]
            records.append(rec)
            lines.append(line)
        data = b"".join(lines)
        self._write_all(data)
        try:
            self._fsync(self._fd)
        except OSError as exc:
            self.poisoned = (
                f"fsync failed ({exc.strerror}); durability of seq {self._head_seq + 1}.. unknown"
            )
            raise AuditWriteFailed(f"audit fsync failed: {exc.strerror}") from exc
        self.stats.fsyncs += 1
        for line in lines:
            self._range.push_data(line[:-1])
        self._known_size += len(data)
        self._head_seq, self._head_hash = seq, prev
        self.stats.batches += 1
        self.stats.records += len(records)
        if self._signing_key is not None and self._latest_size() + self._checkpoint_every <= seq:
            try:
                self._checkpoint_locked()
            except (OSError, AuditWriteFailed):  # the records are durable; a later one retries
                log.exception("audit checkpoint failed")
        return records

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[self._write(self._fd, view) :]
        except OSError as exc:
            try:  # cut our partial line off again so the log does not end torn
                os.ftruncate(self._fd, self._known_size)
            except OSError as trunc:
                self.poisoned = (
                    f"write failed and the partial line could not be removed ({trunc.strerror})"
                )
            raise AuditWriteFailed(f"audit write failed: {exc.strerror}") from exc

    def _rotate_locked(self) -> None:
        target = self.directory / files.rotated_name(self._segment)
        if os.path.lexists(target):
            raise AuditWriteFailed(f"cannot rotate: {target.name} already exists")
        os.rename(self.directory / files.CURRENT, target)
        try:
            self._open_current()
            self._known_size = 0
            fsync_dir(self.directory)
        except OSError as exc:
            self.poisoned = f"rotation failed half way ({exc.strerror})"
            raise AuditWriteFailed(f"audit rotation failed: {exc.strerror}") from exc
        self.stats.rotations += 1

    # -- checkpoints --------------------------------------------------------------------

    def _latest_size(self) -> int:
        return self._latest.size if self._latest is not None else 0

    def checkpoint_now(self, *, force: bool = False) -> Checkpoint | None:
        """Sign and persist a checkpoint of the current head (None if nothing new)."""
        if self._signing_key is None:
            raise AuditWriteFailed("no signing key: this process cannot write checkpoints")
        with self._mutex:
            if self._fd < 0:
                raise AuditWriteFailed("audit log is closed")
            try:
                with self._flock():
                    self._sync_locked()
                    if (
                        self._latest is not None
                        and self._latest.size == self._head_seq
                        and not force
                    ):
                        return None
                    return self._checkpoint_locked()
            except OSError as exc:
                raise AuditWriteFailed(f"audit checkpoint failed: {exc}") from exc

    def _checkpoint_locked(self) -> Checkpoint:
        assert self._signing_key is not None
        cp = sign_checkpoint(self._signing_key, log_id=self.log_id, size=self._head_seq,
                             head_hash=self._head_hash, merkle_root=self._range.root().hex(),
                             ts=self._clock())  # fmt: skip
        seg, off = (self._segment, self._known_size)
        if off == 0 and self._head_seq:  # head is the last line of the previous segment
            seg, off = seg - 1, os.stat(self.directory / files.rotated_name(seg - 1)).st_size
        state = {"size": self._range.size, "range": [h.hex() for h in self._range.hashes],
                 "segment": seg, "offset": off}  # fmt: skip
        line = canonical({**cp.to_dict(), "state": state}) + b"\n"
        self._cp_file_size = files.append_durable(self.directory / files.CHECKPOINTS, line, 0o600)
        atomic_write(self.directory / files.LATEST, cp.to_json() + b"\n", mode=0o600)
        self._latest = cp
        self.stats.checkpoints += 1
        return cp

    def receipt(self, record: Mapping[str, Any]) -> Receipt | None:
        """A signed receipt for a durable ``record`` against the latest checkpoint (None
        without a signing key, or for a record dropped under ``availability_first``)."""
        if self._signing_key is None or record.get("seq") is None:
            return None
        return make_receipt(self._signing_key, record, self._latest)

    # -- reading --------------------------------------------------------------------------

    def prove(self, seq: int) -> InclusionProof:
        """Inclusion proof for record ``seq`` against the latest checkpoint."""
        return reader.prove(self.directory, seq)

    def head_position(self) -> Position:
        """Where the head record ends: ``(seq, record_hash, segment, offset)``.

        A reader that saved this can later start replaying right after that record
        (``records_after(..., anchor=)``) instead of at its segment's first line.
        """
        with self._mutex:
            seg, off = self._segment, self._known_size
            if off == 0 and self._head_seq:  # the head closes the previous segment
                seg -= 1
                off = os.stat(self.directory / files.rotated_name(seg)).st_size
            return Position(self._head_seq, self._head_hash, seg, off)

    def records_after(self, seq: int, *, anchor: Position | None = None) -> Iterator[Record]:
        """Records with seq > ``seq`` up to the current head, authenticated as they stream.

        For replay after a crash (the registry's reconcile). Raises ``ChainBroken`` at the
        first record that does not verify, so forged records are never replayed.
        ``anchor``: a ``head_position()`` saved with ``seq`` (its seq at most ``seq``);
        reading starts after it if the record ending there still is that record. If it
        is not (the log was replaced or cut), every record from the start is read.
        """
        with self._mutex, self._flock():
            self._sync_locked()
            head = self._head_seq
            if anchor is not None and not reader.anchor_holds(
                self.directory, anchor, self._segment, self._parse
            ):
                log.error("the replay anchor (seq %d) is not in this audit log; replaying "
                          "it from the start", anchor.seq)  # fmt: skip
                seq, anchor = 0, None
            if seq >= head:
                return iter(())
            plan, start_seq, start_hash = reader.replay_plan(
                self.directory, seq, self._parse, self._fd, self._known_size, anchor=anchor
            )
        return reader.replay(plan, self._key, seq, head, start_seq, start_hash)

    def close(self) -> None:
        for name in ("_fd", "_lock_fd"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- recovery -----------------------------------------------------------------------

    @classmethod
    def recover(cls, directory: Path | str, hmac_key: bytes, **kwargs: Any) -> Record | None:
        """Move a torn tail aside, cut it off and record that; None if nothing was torn.

        All under the lock, in one open: the evidence file, the truncation and the
        ``audit.recover`` record happen together or the next run finds the tail again.
        """
        with cls(directory, hmac_key, _recover=True, **kwargs) as log_:
            return log_.recovered

    def _recover_tail_locked(self) -> None:
        stamp = self._clock().replace("-", "").replace(":", "")
        cut = files.cut_torn_tail(self.directory, self._fd, self._known_size,
                                  lambda line: self._parse(line) is not None, stamp)  # fmt: skip
        if cut is None:
            return
        offset, name, torn = cut
        self._known_size = offset
        self.recovered = make_fields(
            "audit.recover", target=name,
            reasons=[f"removed {len(torn)} torn bytes at offset {offset} of {files.CURRENT}"],
            extra={"torn_bytes": len(torn), "torn_sha256": hashlib.sha256(torn).hexdigest(),
                   "torn_file": name, "offset": offset, "segment": self._segment},
        )  # fmt: skip
