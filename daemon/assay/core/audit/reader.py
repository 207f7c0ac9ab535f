"""Reading an audit directory: inclusion proofs, Merkle state on open, replay.

Lines before the head never change once written, so these read without the writers'
lock (callers snapshot sizes under it when they need a consistent end). Memory is
O(log n) throughout: leaves stream through compact ranges.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from assay.core.audit import files
from assay.core.audit.chain import GENESIS, MAX_LINE, Record
from assay.core.audit.checkpoint import Checkpoint, InclusionProof, keyring, signature_problem
from assay.core.audit.merkle import CompactRange, inclusion_proof, leaf_hash, verify_inclusion
from assay.core.audit.verify import StreamVerifier
from assay.core.errors import AuditNeedsRecovery, BadRequest, ChainBroken

#: Parses and authenticates one line: the record, None if unparseable (raises if forged).
ParseFn = Callable[[bytes], dict[str, Any] | None]


def prove(directory: Path | str, seq: int, checkpoint: Checkpoint | None = None) -> InclusionProof:
    """Inclusion proof for record ``seq`` against ``checkpoint`` (default: the latest).

    Needs no key: it reads the files once (O(log n) memory) and checks its own answer
    against the checkpoint root, so a log that no longer matches raises ``ChainBroken``.
    """
    directory = Path(directory)
    if checkpoint is None:
        latest = files.read_latest_checkpoint(directory)
        if latest is None:
            raise BadRequest("no checkpoint yet to prove against", code="audit.no_checkpoint")
        checkpoint = latest[0]
    if not 1 <= seq <= checkpoint.size:
        raise BadRequest(f"seq {seq} is not covered by the checkpoint (size "
                         f"{checkpoint.size}); retry after the next checkpoint",
                         code="audit.not_checkpointed")  # fmt: skip
    found: list[bytes] = []

    def leaves(snap: list[tuple[Path, int, int]]) -> Generator[bytes, None, None]:
        n = 0
        for _path, fd, size in snap:
            for _end, line in files.lines(fd, 0, size):
                n += 1
                if n == seq:
                    found.append(line)
                yield leaf_hash(line)

    with files.snapshot(directory) as snap, contextlib.closing(leaves(snap)) as stream:
        try:
            path_hashes = inclusion_proof(seq - 1, checkpoint.size, stream)
        except ValueError as exc:
            raise ChainBroken(f"log shorter than its checkpoint: {exc}") from None
    root = bytes.fromhex(checkpoint.merkle_root)
    if not verify_inclusion(seq - 1, checkpoint.size, leaf_hash(found[0]), path_hashes, root):
        raise ChainBroken("the log no longer matches its checkpoint; run `assay audit verify`")
    return InclusionProof(seq, checkpoint.size, found[0].decode("utf-8", "replace"),
                          [h.hex() for h in path_hashes], checkpoint)  # fmt: skip


def line_ending_at(fd: int, off: int) -> bytes | None:
    """The line whose newline is the byte before ``off``, or None."""
    if off <= 0 or os.pread(fd, 1, off - 1) != b"\n":
        return None
    start = files.last_line_start(fd, off, MAX_LINE + 1)
    return None if start is None else os.pread(fd, off - 1 - start, start)


def saved_state(
    directory: Path,
    *,
    log_id: str,
    head_seq: int,
    segment: int,
    parse: ParseFn,
    public_key: Ed25519PublicKey | None = None,
) -> tuple[CompactRange, int, int] | None:
    """The latest checkpoint's persisted Merkle state ``(range, segment, offset)``.

    Used only if everything agrees: the checkpoint verifies (when we hold the key), the
    unsigned compact range hashes to its signed root, and the record ending at the saved
    position authenticates and is the checkpoint's head. Otherwise None: rebuild.
    """
    latest = files.read_latest_checkpoint(directory)
    if latest is None:
        return None
    cp, state = latest
    if state is None:
        return None
    try:
        seg, off = int(state["segment"]), int(state["offset"])
        cr = CompactRange(int(state["size"]), [bytes.fromhex(h) for h in state["range"]])
    except (ValueError, TypeError, KeyError):
        return None
    if cr.size != cp.size or cp.size > head_seq or cp.log_id != log_id:
        return None
    if cr.root().hex() != cp.merkle_root:
        return None
    if public_key is not None and signature_problem(cp, keyring([public_key])) is not None:
        return None
    if not 1 <= seg <= segment or off < 0:
        return None
    if cp.size == 0:
        return cr, seg, off
    name = files.CURRENT if seg == segment else files.rotated_name(seg)
    try:
        fd = os.open(directory / name, files.O_READ)
    except OSError:
        return None
    try:
        line = line_ending_at(fd, off)
    finally:
        os.close(fd)
    rec = parse(line) if line else None
    if rec is None or rec["seq"] != cp.size or rec["record_hash"] != cp.head_hash:
        return None
    return cr, seg, off


def lines_from(
    directory: Path, segment: int, offset: int, current: int, current_fd: int, current_end: int
) -> Iterator[bytes]:
    """Every line from ``(segment, offset)`` to the current file's ``current_end``."""
    for index in range(segment, current + 1):
        start = offset if index == segment else 0
        if index == current:
            for _end, line in files.lines(current_fd, start, current_end):
                yield line
            return
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(directory / files.rotated_name(index), files.O_READ)
            try:
                for _end, line in files.lines(fd, start):
                    yield line
            finally:
                os.close(fd)


def replay(
    plan: list[tuple[int, int, int | None]],
    key: bytes,
    after: int,
    head: int,
    start_seq: int,
    start_hash: str,
) -> Iterator[Record]:
    """Verify the ranges in ``plan`` (open fds, closed here) and yield records in
    ``(after, head]``; ``ChainBroken`` at the first line that does not verify."""
    v = StreamVerifier(key, start_seq=start_seq, start_hash=start_hash)
    try:
        for fd, start, end in plan:
            for _off, line in files.lines(fd, start, end):
                rec = v.check_line(line)
                if rec is None:
                    raise ChainBroken(f"audit replay stopped: {v.report.breaks[0]}")
                if after < rec["seq"] <= head:
                    yield rec
                if rec["seq"] >= head:
                    return
    finally:
        for fd, _start, _end in plan:
            os.close(fd)


def tail_record(directory: Path, fd: int, size: int, name: str, parse: ParseFn) -> tuple[int, str]:
    """``(seq, record_hash)`` of the file's last line; ``AuditNeedsRecovery`` if torn."""
    if os.pread(fd, 1, size - 1) != b"\n":
        torn = size - files.tail_start(fd, size)
        raise AuditNeedsRecovery(
            f"{name} ends in a torn write ({torn} bytes without a newline); "
            f"run `assay audit recover {directory}`"
        )
    line = line_ending_at(fd, size)
    rec = parse(line) if line is not None else None
    if rec is None:
        raise AuditNeedsRecovery(
            f"{name} ends in an unparseable line; run `assay audit recover {directory}`"
        )
    return rec["seq"], rec["record_hash"]


def find_head(directory: Path, fd: int, size: int, parse: ParseFn) -> tuple[int, str]:
    """The last record of the current file, else of the newest non-empty rotated one."""
    if size:
        return tail_record(directory, fd, size, files.CURRENT, parse)
    for i in reversed(files.rotated_indexes(directory)):
        rfd = os.open(directory / files.rotated_name(i), files.O_READ)
        try:
            rsize = os.fstat(rfd).st_size
            if rsize:
                return tail_record(directory, rfd, rsize, files.rotated_name(i), parse)
        finally:
            os.close(rfd)
    return 0, GENESIS


class Position(NamedTuple):
    """Where a record's line ends in the log: enough to resume reading right after it."""

    seq: int
    record_hash: str
    segment: int
    offset: int

    def to_json(self) -> str:
        return json.dumps(list(self))

    @classmethod
    def from_json(cls, raw: str) -> Position | None:
        try:
            seq, record_hash, segment, offset = json.loads(raw)
            return cls(int(seq), str(record_hash), int(segment), int(offset))
        except (ValueError, TypeError, RecursionError):
            return None


def anchor_holds(directory: Path, anchor: Position, segment_now: int, parse: ParseFn) -> bool:
    """Does the line ending at ``anchor`` authenticate as the record it names?"""
    if anchor.seq == 0:
        return True  # before the first record: nothing to check
    if not 1 <= anchor.segment <= segment_now or anchor.offset <= 0:
        return False
    name = files.CURRENT if anchor.segment == segment_now else files.rotated_name(anchor.segment)
    try:
        fd = os.open(directory / name, files.O_READ)
    except OSError:
        return False
    try:
        line = line_ending_at(fd, anchor.offset)
        rec = parse(line) if line else None
    except (OSError, ChainBroken):
        return False
    finally:
        os.close(fd)
    return rec is not None and rec["seq"] == anchor.seq and rec["record_hash"] == anchor.record_hash


def replay_plan(
    directory: Path,
    after: int,
    parse: ParseFn,
    current_fd: int,
    current_end: int,
    *,
    anchor: Position | None = None,
) -> tuple[list[tuple[int, int, int | None]], int, str]:
    """Open fds with ``(start, end)`` offsets covering the records after ``after``, plus
    the ``(seq, hash)`` the first line must chain from. Call under the writers' lock.

    Reading starts right after ``anchor`` (checked by the caller, at or before
    ``after``), else after the latest checkpoint at or before ``after`` whose saved
    position still holds its head record, else at the first segment that can hold a
    record after ``after`` (earlier whole segments are skipped by their last line). The
    lines in between are still chain-verified from that start, so a wrong index costs
    only time.
    """
    current = files.rotated_indexes(directory)
    segment_now = current[-1] + 1 if current else 1
    if anchor is None or anchor.seq == 0:
        anchor = _checkpoint_anchor(directory, after, segment_now, parse)
    plan: list[tuple[int, int, int | None]] = []
    start_seq, start_hash = 0, GENESIS
    try:
        for index in current:
            if anchor is not None and index < anchor.segment:
                continue
            name = files.rotated_name(index)
            fd = os.open(directory / name, files.O_READ)
            size = os.fstat(fd).st_size
            begin = anchor.offset if anchor is not None and index == anchor.segment else 0
            plan.append((fd, begin, size))
            last = tail_record(directory, fd, size, name, parse) if size else None
            if anchor is None and last is not None and last[0] <= after and len(plan) == 1:
                start_seq, start_hash = last
                os.close(plan.pop()[0])
        begin = anchor.offset if anchor is not None and anchor.segment == segment_now else 0
        plan.append((os.dup(current_fd), begin, current_end))
    except BaseException:
        for fd, _start, _end in plan:
            os.close(fd)
        raise
    if anchor is not None:
        start_seq, start_hash = anchor.seq, anchor.record_hash
    return plan, start_seq, start_hash


#: The checkpoint index is searched from its end: at most this many candidates are
#: checked, within this many bytes (a year of checkpoints is hundreds of MB).
MAX_ANCHOR_CANDIDATES = 16
MAX_ANCHOR_SCAN_BYTES = 4 * 1024 * 1024


def _checkpoint_anchor(
    directory: Path, after: int, segment_now: int, parse: ParseFn
) -> Position | None:
    """The latest checkpoint at or before ``after`` whose saved position still holds its
    head, searched backwards from the index's end (the mark is usually near the head).

    The checkpoint file is an index, not evidence: a candidate is used only if the
    record ending at its position authenticates and is the checkpoint's head.
    """
    try:
        fd = os.open(directory / files.CHECKPOINTS, files.O_READ)
    except FileNotFoundError:
        return None
    tried = 0
    try:
        for raw in _lines_backwards(fd, MAX_ANCHOR_SCAN_BYTES):
            try:
                obj = json.loads(raw)
                state = obj["state"]
                cand = Position(int(obj["size"]), str(obj["head_hash"]),
                                int(state["segment"]), int(state["offset"]))  # fmt: skip
            except (ValueError, TypeError, KeyError, RecursionError):
                continue
            if not 0 < cand.seq <= after:
                continue
            if anchor_holds(directory, cand, segment_now, parse):
                return cand
            tried += 1
            if tried >= MAX_ANCHOR_CANDIDATES:
                return None
    finally:
        os.close(fd)
    return None


def _lines_backwards(fd: int, budget: int) -> Iterator[bytes]:
    """The file's lines from last to first, reading at most ``budget`` bytes."""
    end = os.fstat(fd).st_size
    carry = b""
    read = 0
    while end > 0 and read < budget:
        start = max(0, end - 64 * 1024)
        data = os.pread(fd, end - start, start) + carry
        read += end - start
        end = start
        parts = data.split(b"\n")
        carry = parts[0] if start > 0 else b""
        for line in reversed(parts[1:] if start > 0 else parts):
            if line:
                yield line
