"""File-level helpers for the audit log directory: names, safe opens, tails, line streams.

Layout of an audit directory::

    audit.jsonl            current file (segment N), appended to
    audit.000001.jsonl     rotated segments 1..N-1, never written again
    audit.lock             flock(2) target serialising every writing process
    checkpoints.jsonl      every signed checkpoint, one per line, with its Merkle state
    checkpoint.json        the latest signed checkpoint alone (atomically replaced)
    audit.torn.<ts>        bytes removed by ``assay audit recover`` (kept as evidence)

Segment numbers are fixed at creation: the current file *is* segment N and becomes
``audit.<N>.jsonl`` when rotated, so a position ``(segment, offset)`` never goes stale.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

from assay.core.atomic import fsync_dir
from assay.core.audit.checkpoint import STATE_MEMBER, Checkpoint, parse_checkpoint
from assay.core.audit.schema import MAX_LINE
from assay.core.errors import AssayError

CURRENT: Final = "audit.jsonl"
LOCK: Final = "audit.lock"
CHECKPOINTS: Final = "checkpoints.jsonl"
LATEST: Final = "checkpoint.json"
TORN_PREFIX: Final = "audit.torn."
CHUNK: Final = 1024 * 1024
_ROTATED = re.compile(r"audit\.(\d{6,})\.jsonl\Z")

O_CREATE: Final = os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
O_READ: Final = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def rotated_name(index: int) -> str:
    return f"audit.{index:06d}.jsonl"


def rotated_indexes(directory: Path) -> list[int]:
    return sorted(int(m.group(1)) for name in os.listdir(directory) if (m := _ROTATED.match(name)))


def segment_paths(directory: Path) -> list[Path]:
    """Every log file in chain order: rotated segments ascending, then the current file."""
    paths = [directory / rotated_name(i) for i in rotated_indexes(directory)]
    if (directory / CURRENT).exists():
        paths.append(directory / CURRENT)
    return paths


@contextlib.contextmanager
def snapshot(directory: Path) -> Iterator[list[tuple[Path, int, int]]]:
    """``(path, fd, size)`` of every segment, opened and sized under a shared lock.

    A consistent cut of a live log: writers hold the lock exclusively while they append
    or rotate, so no line is half-written at a recorded size, and the open fds survive a
    later rotation. The lock is held only while opening, never while reading.
    """
    opened: list[tuple[Path, int, int]] = []
    try:
        try:
            lock = os.open(directory / LOCK, O_READ)
        except FileNotFoundError:
            lock = -1
        try:
            if lock >= 0:
                fcntl.flock(lock, fcntl.LOCK_SH)
            for path in segment_paths(directory):
                fd = os.open(path, O_READ)
                opened.append((path, fd, os.fstat(fd).st_size))
        finally:
            if lock >= 0:
                os.close(lock)  # closing releases the lock
        yield opened
    finally:
        for _path, fd, _size in opened:
            os.close(fd)


def is_log_dir(path: Path) -> bool:
    return path.is_dir() and ((path / CURRENT).exists() or bool(rotated_indexes(path)))


def open_nofollow(path: Path, flags: int, mode: int = 0o600) -> int:
    """``os.open`` that refuses a symlink at the final component (``O_NOFOLLOW``)."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)


def pread_all(fd: int, start: int, end: int) -> bytes:
    parts: list[bytes] = []
    pos = start
    while pos < end:
        data = os.pread(fd, min(CHUNK, end - pos), pos)
        if not data:
            break
        parts.append(data)
        pos += len(data)
    return b"".join(parts)


def chunks(fd: int, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """The bytes of ``fd`` from ``start`` to ``end`` (EOF if None) in 1 MiB chunks."""
    pos = start
    while end is None or pos < end:
        data = os.pread(fd, CHUNK if end is None else min(CHUNK, end - pos), pos)
        if not data:
            return
        pos += len(data)
        yield data


def file_chunks(path: Path) -> Iterator[bytes]:
    fd = os.open(path, O_READ)
    try:
        yield from chunks(fd)
    finally:
        os.close(fd)


def lines(fd: int, start: int, end: int | None = None) -> Iterator[tuple[int, bytes]]:
    """``(end offset, line)`` for each complete line in the range; a partial tail is dropped."""
    pend = b""
    pos = start
    for data in chunks(fd, start, end):
        buf = pend + data if pend else data
        base = pos - len(pend)
        pos += len(data)
        cut = 0
        while (nl := buf.find(b"\n", cut)) >= 0:
            yield base + nl + 1, buf[cut:nl]
            cut = nl + 1
        pend = buf[cut:]


def last_line_start(fd: int, end: int, limit: int) -> int | None:
    """Offset where the line ending at ``end`` starts (``end`` is after its newline).

    Searches at most ``limit`` bytes back; None if the line is longer than that.
    """
    pos = end - 1  # skip the line's own newline
    while pos > 0:
        lo = max(0, pos - 64 * 1024)
        data = os.pread(fd, pos - lo, lo)
        nl = data.rfind(b"\n")
        if nl >= 0:
            return lo + nl + 1
        if end - lo > limit:
            return None
        pos = lo
    return 0


def tail_start(fd: int, size: int) -> int:
    """Offset just after the last newline in the first ``size`` bytes (0 if none)."""
    pos = size
    while pos > 0:
        lo = max(0, pos - CHUNK)
        nl = os.pread(fd, pos - lo, lo).rfind(b"\n")
        if nl >= 0:
            return lo + nl + 1
        pos = lo
    return 0


def read_latest_checkpoint(directory: Path) -> tuple[Checkpoint, dict[str, Any] | None] | None:
    """The last parseable line of ``checkpoints.jsonl`` and its unsigned Merkle state.

    A torn or corrupt last line (a crash while appending a checkpoint) is skipped: the
    checkpoint file is an index we can rebuild, not evidence.
    """
    try:
        fd = os.open(directory / CHECKPOINTS, O_READ)
    except FileNotFoundError:
        return None
    try:
        size = os.fstat(fd).st_size
        data = os.pread(fd, min(size, 256 * 1024), max(0, size - 256 * 1024))
    finally:
        os.close(fd)
    for raw in reversed(data.split(b"\n")):
        try:
            obj = json.loads(raw)
            cp = parse_checkpoint(obj)
        except (ValueError, RecursionError, AssayError):
            continue
        state = obj.get(STATE_MEMBER)
        return cp, state if isinstance(state, dict) else None
    return None


def append_durable(path: Path, line: bytes, mode: int = 0o600) -> int:
    """Append ``line`` and fsync; the file's new size.

    If the file ends in a torn line (a crash mid-append), a newline goes first so the new
    line stays whole and readers skip the torn one.
    """
    fd = open_nofollow(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, mode)
    try:
        info = os.fstat(fd)
        if stat.S_IMODE(info.st_mode) & ~mode:
            os.fchmod(fd, mode)  # a file left looser by an older version is tightened
        size = info.st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
        return size + len(line)
    finally:
        os.close(fd)


def write_evidence(directory: Path, stem: str, data: bytes) -> str:
    """Write ``data`` durably to a new file named ``stem`` (or ``stem.N``); its name."""
    name = stem
    for n in range(1, 1000):
        try:
            fd = open_nofollow(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            break
        except FileExistsError:
            name = f"{stem}.{n}"
    else:  # pragma: no cover - a thousand recoveries in one millisecond
        raise FileExistsError(f"cannot name an evidence file {stem}")
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(directory)
    return name


def cut_torn_tail(
    directory: Path, fd: int, size: int, parses: Callable[[bytes], bool], stamp: str
) -> tuple[int, str, bytes] | None:
    """Move a torn tail to ``audit.torn.<stamp>`` and cut it off; ``(offset, name, bytes)``.

    Torn = the bytes after the last newline, plus the last complete line if it does not
    parse. Evidence first (fsynced), then the truncation (fsynced): a crash in between
    leaves the tail in both places, never in neither. None if the log ends cleanly.
    """
    cut = tail_start(fd, size)
    if cut:
        start = last_line_start(fd, cut, MAX_LINE + 1)
        if start is None or not parses(os.pread(fd, cut - 1 - start, start)):
            cut = start if start is not None else tail_start(fd, cut - 1)
    if cut == size:
        return None
    torn = pread_all(fd, cut, size)
    name = write_evidence(directory, f"{TORN_PREFIX}{stamp}", torn)
    os.ftruncate(fd, cut)
    os.fsync(fd)
    return cut, name, torn
