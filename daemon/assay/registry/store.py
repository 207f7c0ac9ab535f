"""The content-addressed object store: ``objects/sha256/<hex>``.

Bytes enter through an ``Ingest``: hashed while written to a temp file in the same file
system, fsynced, checked against a declared digest, then renamed into place and the
directory fsynced. Every method here blocks; async callers use ``trio.to_thread``.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import mmap
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path

from assay.core.atomic import fsync_dir
from assay.core.errors import PayloadTooLarge, StorageError, storage_error
from assay.registry.digests import hex_of
from assay.registry.errors import DigestMismatch

READ_CHUNK = 1024 * 1024
#: O_DIRECT staging buffer (page-aligned, from mmap) and the alignment it needs.
STAGE_BYTES = 4 * 1024 * 1024
ALIGN = 4096

log = logging.getLogger("assay.store")


class Ingest:
    """One upload in progress. Not thread-safe: one writer at a time.

    Writes go through a page-aligned staging buffer with ``O_DIRECT`` where the file
    system allows it: the bytes bypass the page cache, which on this appliance's disks
    cuts the kernel's CPU per GiB several-fold and keeps a huge upload from evicting the
    cache the daemon serves from. The unaligned tail is written buffered at commit.

    Buffer discipline: every memoryview of an mmap (the stage, or a caller's block) is
    taken in a ``with`` and so released on every path, an exception's included. A view
    left alive in a traceback's frame keeps the mmap exported, and closing it then
    raises ``BufferError``: that once turned a full disk into a bare 500 and left the
    temp file behind, holding the space every later upload needed.
    """

    def __init__(self, store: ObjectStore, max_bytes: int) -> None:
        self._store = store
        self._max = max_bytes
        self._hash = hashlib.sha256()
        self.size = 0
        self._rfd: int | None = None
        self._stage: mmap.mmap | None = None
        self._fill = 0
        #: ``fstat`` of the committed file, taken after its mode and name are final.
        self.committed_stat: os.stat_result | None = None
        self.tmp_path = store.tmp_dir / f"ingest-{secrets.token_hex(12)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        self._direct = hasattr(os, "O_DIRECT")
        try:
            try:
                self._fd: int | None = os.open(
                    self.tmp_path, flags | (os.O_DIRECT if self._direct else 0), 0o600
                )
            except OSError as exc:
                if exc.errno != errno.EINVAL or not self._direct:
                    raise
                self._direct = False  # e.g. tmpfs: no O_DIRECT, plain buffered writes
                self._fd = os.open(self.tmp_path, flags, 0o600)
        except OSError as exc:  # ENOSPC here means no inode left
            raise storage_error(exc, "creating an upload's temp file") from None
        if self._direct:
            try:
                self._stage = mmap.mmap(-1, STAGE_BYTES)
            except BaseException:
                self.abort()
                raise

    def _check_open(self) -> int:
        if self._fd is None:
            raise StorageError("ingest already finished")
        return self._fd

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Hash and write one chunk; refuse before writing past the size cap."""
        fd = self._check_open()
        if self.size + len(data) > self._max:
            raise PayloadTooLarge(f"artifact larger than the {self._max}-byte cap")
        self._hash.update(data)
        with memoryview(data) as view:
            self.size += len(view)
            if self._stage is None:
                _write_all(fd, view)
                return
            done = 0
            while done < len(view):
                take = min(len(view) - done, STAGE_BYTES - self._fill)
                with view[done : done + take] as part:
                    self._stage[self._fill : self._fill + take] = part
                self._fill += take
                done += take
                if self._fill == STAGE_BYTES:
                    with memoryview(self._stage) as stage:
                        _write_all(fd, stage)
                    self._fill = 0

    def alloc_block(self, size: int) -> mmap.mmap:
        """A page-aligned buffer for :meth:`write_block`, ``size`` rounded up to ``ALIGN``.

        The body is read straight into such blocks, so a full block reaches the disk
        with no copy in user space: hashed in place, then written ``O_DIRECT``.
        """
        return mmap.mmap(-1, -(-size // ALIGN) * ALIGN)

    def write_block(self, block: mmap.mmap, length: int) -> None:
        """Hash and write ``block[:length]``, a buffer from :meth:`alloc_block`.

        When nothing is staged and ``length`` is a whole number of pages, the block goes
        to disk as it is (an mmap is page-aligned, and every earlier write was whole
        pages, so the file offset is aligned too). Otherwise it is staged like any chunk.
        """
        with memoryview(block) as whole, whole[:length] as view:
            if self._fd is None or self._stage is None or self._fill or length % ALIGN:
                self.write(view)
                return
            if self.size + length > self._max:
                raise PayloadTooLarge(f"artifact larger than the {self._max}-byte cap")
            self._hash.update(view)
            self.size += length
            _write_all(self._fd, view)

    def _flush_tail(self) -> None:
        """Write what is staged: the aligned part direct, the rest buffered."""
        if self._stage is None or self._fd is None or not self._fill:
            return
        aligned = self._fill - self._fill % ALIGN
        with memoryview(self._stage) as stage:
            if aligned:
                with stage[:aligned] as head:
                    _write_all(self._fd, head)
            if self._fill > aligned:
                try:
                    flags = fcntl.fcntl(self._fd, fcntl.F_GETFL)
                    fcntl.fcntl(self._fd, fcntl.F_SETFL, flags & ~os.O_DIRECT)
                except OSError as exc:
                    raise storage_error(exc, "writing to the store") from None
                with stage[aligned : self._fill] as tail:
                    _write_all(self._fd, tail)
        self._fill = 0

    def read_at(self, offset: int, length: int) -> bytes:
        """Read back from the temp file for inspection before it is committed."""
        self._check_open()
        self._flush_tail()
        try:
            if self._rfd is None:
                flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
                self._rfd = os.open(self.tmp_path, flags)
            return os.pread(self._rfd, length, offset)
        except OSError as exc:
            raise storage_error(exc, "reading an upload back") from None

    def digest(self) -> str:
        return "sha256:" + self._hash.hexdigest()

    def commit(self, expected: str | None) -> tuple[str, bool]:
        """fsync, check ``expected``, rename into place. Returns (digest, newly_stored)."""
        fd = self._check_open()
        digest = self.digest()
        if expected is not None and expected != digest:
            self.abort()
            raise DigestMismatch(
                f"declared {expected} but the body hashes to {digest}",
                declared=expected,
                actual=digest,
            )
        final = self._store.path_for(digest)
        placed = False
        try:
            self._flush_tail()
            # Objects are read-only to everyone (consumers reopen a handed-out fd through
            # /proc/self/fd/N, which checks the mode) and writable by no one but root.
            os.fchmod(fd, OBJECT_MODE)
            os.fsync(fd)  # a delayed allocation can still fail here, ENOSPC included
            final.parent.mkdir(parents=True, exist_ok=True)
            # The caller holds the digest's lock and found no row for it, so whatever is
            # at the path is an orphan (a crash between rename and record) or was
            # planted: a symlink, a FIFO, a file with bytes nobody checked. The verified
            # temp file replaces it; a directory there makes the rename fail instead.
            os.replace(self.tmp_path, final)
            placed = True
            fsync_dir(final.parent)
            # The inode just hashed, with its final mode and name (a rename moves ctime):
            # the fingerprint a consumer handoff compares against (``Fingerprint``).
            self.committed_stat = os.fstat(fd)
            self._close()
        except BaseException as exc:
            self.abort()
            if placed:  # the rename may not be durable: nothing claims these bytes yet
                final.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise storage_error(exc, "storing the upload") from None
            raise
        return digest, True

    def abort(self) -> None:
        """Release everything and remove the temp file; safe to call on any path, twice."""
        try:
            self._close()
        finally:
            try:
                self.tmp_path.unlink(missing_ok=True)
            except OSError as exc:
                log.error("could not remove %s: %s", self.tmp_path, exc.strerror)  # noqa: TRY400

    def _close(self) -> None:
        """Close both fds and the stage; each is released even if another fails."""
        fd, self._fd = self._fd, None
        rfd, self._rfd = self._rfd, None
        stage, self._stage = self._stage, None
        try:
            if fd is not None:
                os.close(fd)
        finally:
            try:
                if rfd is not None:
                    os.close(rfd)
            finally:
                if stage is not None:
                    stage.close()


def _write_all(fd: int, view: memoryview) -> None:
    """Write all of ``view``; each remainder is a view released before the next write."""
    done = 0
    try:
        while done < len(view):
            with view[done:] as rest:
                done += os.write(fd, rest)
    except OSError as exc:
        raise storage_error(exc, "writing to the store") from None


#: What an object path can hold instead of one regular file, and how a record says so.
PROBLEMS: dict[str, str] = {
    "missing": "stored bytes are missing",
    "symlink": "the object path is a symlink, not a regular file",
    "directory": "the object path is a directory, not a regular file",
    "fifo": "the object path is a fifo, not a regular file",
    "socket": "the object path is a socket, not a regular file",
    "device": "the object path is a device, not a regular file",
    "linked": "the stored file has more than one name (hard links): its bytes can change "
    "through a name the store does not own",
    "unreadable": "the stored bytes cannot be read",
    "changed": "the stored file changed since its last full hash (its inode, size, mtime or "
    "ctime differ) and is too large to re-hash on open; verify it to restore it",
    "changing": "the stored file changed while it was being hashed",
    "loosened": "the stored file is not mode 0444 owned by the daemon's user (a write bit "
    "lets anyone holding its fd reopen /proc/self/fd/N for writing); chmod it 0444 (a "
    "restart does) and verify it to restore it",
}

#: Every object file: read-only to all, writable by nobody but root.
OBJECT_MODE = 0o444
#: The store's directories: only the daemon's user may enter or change them.
DIR_MODE = 0o700


def describe(actual: str) -> str:
    """A record's reason for what a check found: a problem name or the bytes' digest."""
    return PROBLEMS.get(actual, f"stored bytes hash to {actual}")


class UnusableObject(Exception):
    """The object path holds no bytes the store can vouch for; ``problem`` is a key of
    ``PROBLEMS``. Callers record it as an integrity failure of that artifact alone."""

    def __init__(self, problem: str, detail: str = "") -> None:
        super().__init__(f"{PROBLEMS[problem]}{': ' + detail if detail else ''}")
        self.problem = problem


def hash_fd(fd: int) -> tuple[str, int]:
    """(digest, size) of everything readable from ``fd``; ("unreadable", 0) on a read error."""
    h = hashlib.sha256()
    size = 0
    try:
        while chunk := os.read(fd, READ_CHUNK):
            h.update(chunk)
            size += len(chunk)
    except OSError:
        return "unreadable", 0
    return "sha256:" + h.hexdigest(), size


def hash_stable(fd: int) -> tuple[str, int, os.stat_result | None]:
    """Hash ``fd`` from its start and say which file the hash vouches for.

    (digest, size, stat): ``stat`` is the fd's ``fstat`` if it was the same before and
    after the hash (``Fingerprint`` fields), else None: the file changed while it was
    read, so the hash may mix old and new bytes and vouches for no file. The offset is
    put back at 0, so the fd can be handed on and read from its start.
    """
    try:
        before = os.fstat(fd)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        return "unreadable", 0, None
    actual, size = hash_fd(fd)
    try:
        after = os.fstat(fd)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        return "unreadable", 0, None
    same = _stat_key(before) == _stat_key(after) and size == after.st_size
    return actual, size, after if same else None


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _kind(mode: int) -> str | None:
    """The problem name for a file type that is not a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device"


class ObjectStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects" / "sha256"
        self.tmp_dir = root / "tmp"

    def open(self) -> None:
        """Create the layout and sweep temp files left by a crash (never committed).

        Every directory is made (or put back to) 0700 and every object file 0444, so a
        store made before objects were read-only, or loosened by hand, is tightened at
        the next start: nobody but the daemon's user can reach or change the bytes.
        """
        for d in (self.root, self.root / "objects", self.objects, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
            try:
                if stat.S_IMODE(d.lstat().st_mode) != DIR_MODE:
                    d.chmod(DIR_MODE)
            except OSError as exc:
                raise storage_error(exc, f"setting the mode of {d}") from None
        self._tighten_objects()
        for leftover in self.tmp_dir.glob("ingest-*"):
            if leftover.is_symlink() or not leftover.is_dir():
                leftover.unlink(missing_ok=True)
        probe = self.tmp_dir / f".probe-{secrets.token_hex(4)}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StorageError(f"store {self.root} is not writable: {exc}") from None

    def _tighten_objects(self) -> None:
        """Make every object file 0444 (changing only those that are not: a chmod moves
        ctime, so their next consumer handoff re-hashes them). Anything that is not one
        regular file is left for the integrity checks to report."""
        for entry in os.scandir(self.objects):
            try:
                if not entry.is_file(follow_symlinks=False):
                    continue
                if stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode) == OBJECT_MODE:
                    continue
                fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    os.fchmod(fd, OBJECT_MODE)
            except OSError as exc:
                log.error("could not make %s read-only: %s", entry.path, exc.strerror)  # noqa: TRY400
            finally:
                os.close(fd)

    def begin(self, max_bytes: int) -> Ingest:
        return Ingest(self, max_bytes)

    def path_for(self, digest: str) -> Path:
        return self.objects / hex_of(digest)

    def exists(self, digest: str) -> bool:
        """One regular file, not a link, at the digest's path."""
        try:
            info = os.lstat(self.path_for(digest))
        except OSError:
            return False
        return stat.S_ISREG(info.st_mode) and info.st_nlink == 1

    def remove(self, digest: str) -> None:
        """Remove what is at the object path, if it is something the store could have
        made (a file or a link); anything else is left for an operator and logged,
        because the change that asked for the removal is already committed."""
        path = self.path_for(digest)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            log.error("could not remove %s: %s", path, exc.strerror or exc)  # noqa: TRY400
            return
        try:
            fsync_dir(path.parent)
        except OSError as exc:
            log.error("could not fsync %s: %s", path.parent, exc.strerror or exc)  # noqa: TRY400

    def open_object(self, digest: str) -> int:
        """An fd on the digest's stored bytes, only if they are one regular file.

        The one way every reader (rehash, promote, serve, sweep) opens an object: the
        path must not be a symlink (``O_NOFOLLOW``, even to the right bytes), a FIFO
        (``O_NONBLOCK``: opening one never waits for a writer), a directory, socket or
        device (``fstat``), a file with a second hard link, nor one whose mode is not
        0444 or whose owner is not this daemon's user. ``lstat`` first, so a
        device is not even opened unless it is swapped in between; the fd is then
        checked itself. Raises ``UnusableObject``.
        """
        path = self.path_for(digest)
        # Step OBJ-1 (lstat): what the name is, without following it.
        try:
            before = os.lstat(path)
        except FileNotFoundError:
            raise UnusableObject("missing") from None
        except OSError as exc:
            raise UnusableObject("unreadable", exc.strerror or str(exc)) from None
        kind = _kind(before.st_mode)
        if kind is not None:
            raise UnusableObject(kind)
        # Step OBJ-2 (open): never follows a link, never blocks.
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise UnusableObject("missing") from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnusableObject("symlink") from None
            raise UnusableObject("unreadable", exc.strerror or str(exc)) from None
        # Step OBJ-3 (fstat): the fd itself is one regular file with one name.
        try:
            info = os.fstat(fd)
            kind = _kind(info.st_mode)
            if kind is not None:
                raise UnusableObject(kind)
            if info.st_nlink != 1:
                raise UnusableObject("linked", f"{info.st_nlink} names")
            # Step OBJ-4 (mode and owner): 0444 exactly, owned by this daemon's user. A
            # write bit would let any holder of the fd reopen it for writing through
            # /proc/self/fd/N (a magic link that skips the 0700 directories); another
            # owner could chmod it at will. Never repaired here: a writer may already
            # hold a writable fd from while the mode was loose.
            mode = stat.S_IMODE(info.st_mode)
            if mode != OBJECT_MODE or info.st_uid != os.geteuid():
                raise UnusableObject("loosened", f"mode {mode:o}, owner uid {info.st_uid}")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def rehash(self, digest: str) -> tuple[str, int]:
        """Hash the stored bytes from disk: (digest, size), or (problem, 0) for an object
        path that holds no usable bytes (a key of ``PROBLEMS``)."""
        actual, size, _stat = self.hash_object(digest)
        return actual, size

    def hash_object(self, digest: str) -> tuple[str, int, os.stat_result | None]:
        """``rehash`` plus the ``fstat`` of the file the hash vouches for (``hash_stable``;
        None if it changed while read or holds no usable bytes)."""
        try:
            fd = self.open_object(digest)
        except UnusableObject as exc:
            return exc.problem, 0, None
        try:
            return hash_stable(fd)
        finally:
            os.close(fd)

    def iter_chunks(self, fd: int, chunk: int = READ_CHUNK) -> Iterator[bytes]:
        while data := os.read(fd, chunk):
            yield data

    def usage(self) -> int:
        total = 0
        for p in self.objects.iterdir():
            info = p.lstat()
            if stat.S_ISREG(info.st_mode):
                total += info.st_size
        return total
