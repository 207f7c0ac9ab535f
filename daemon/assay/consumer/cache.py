"""The consumer's TUF metadata cache: only ever one this user alone can write, and what it
remembers beside ngclient's files (a withdrawal it saw).

The cache is a consumer's rollback protection and its answer while the daemon is down:
ngclient trusts whatever ``root.json``, ``timestamp.json``, ``snapshot.json`` and
``targets.json`` it finds there as its starting point (signed by the pinned root, so
old signed metadata passes). So anyone who can write the cache can plant the set from
before a revocation. Hence, at every verification:

  CACHE-1 the directory is opened ``O_NOFOLLOW | O_DIRECTORY`` and its ``fstat`` must be
          owned by this process's euid with no group or other write bit; its parent must
          not let anyone else replace it (``check_parent``: not group/other-writable
          unless sticky, owned by root or this uid);
  CACHE-2 every file the checker or ngclient reads there, if present, must be a regular
          file (never a link, but ngclient's own ``root.json`` link into
          ``root_history/``), owned by this euid, with no group or other write bit, and
          so must ``root_history/`` and each file in it;
  CACHE-3 the lock file is opened through the directory's fd with ``O_NOFOLLOW`` and
          checked the same way before it is locked.

A withdrawal (the daemon could not publish a revocation and withdrew its timestamp) is
remembered durably here (``WITHDRAWN_MARKER``: temp file, fsync, rename, fsync the
directory), with the highest timestamp version it could still have vouched for; until a
published timestamp above that version verifies, the checker fails closed and never falls
back to the cached (pre-withdrawal) metadata, across restarts of the consumer too.

Standard library only (no trio, Quart, hypercorn).
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import stat
from pathlib import Path
from types import TracebackType

from assay.core.errors import UnsafeFile
from assay.core.trusted_files import check_parent

#: What ngclient keeps in its metadata dir, and this checker's own files.
NGCLIENT_FILES = ("root.json", "timestamp.json", "snapshot.json", "targets.json")
WITHDRAWN_MARKER = "assay-withdrawn.json"
LOCK = ".lock"
ROOT_HISTORY = "root_history"
#: What ngclient's ``root.json`` symlink may point at.
ROOT_LINK = re.compile(r"root_history/[1-9][0-9]{0,8}\.root\.json")
_MAX_ROOTS = 4096
_MAX_MARKER_BYTES = 4096
_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafeCache(Exception):
    """The cache dir, or a file in it, could be written by someone else."""


def cache_problem(directory: Path) -> str | None:
    """Why ``directory`` must not be a cache (CACHE-1), or None if it may be."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
    except OSError as exc:
        return f"{directory}: cannot be opened as a directory ({exc.strerror or exc})"
    try:
        return _owned_problem(os.fstat(fd), directory, directory=True) or _parent_problem(directory)
    finally:
        os.close(fd)


def _parent_problem(directory: Path) -> str | None:
    try:
        check_parent(directory)
    except UnsafeFile as exc:
        return exc.detail
    return None


def _owned_problem(info: os.stat_result, path: Path, *, directory: bool = False) -> str | None:
    kind_ok = stat.S_ISDIR(info.st_mode) if directory else stat.S_ISREG(info.st_mode)
    if not kind_ok:
        return f"{path}: not a {'directory' if directory else 'regular file'}"
    if info.st_uid != os.geteuid():
        return f"{path}: owned by uid {info.st_uid}, not this process's uid {os.geteuid()}"
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        return f"{path}: mode {mode:04o} lets group or others write it"
    return None


class LockedCache:
    """The cache dir, checked (CACHE-1..3) and exclusively locked for one verification:
    consumers sharing one never interleave. Raises ``UnsafeCache``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.dirfd = -1
        self.lockfd = -1

    def __enter__(self) -> LockedCache:
        problem = cache_problem(self.directory)
        if problem is not None:
            raise UnsafeCache(problem)
        try:
            self.dirfd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW)
            problem = _owned_problem(os.fstat(self.dirfd), self.directory, directory=True)
            if problem is not None:  # swapped since the check above
                raise UnsafeCache(problem)
            # Step CACHE-3: the lock, through the directory's fd, never a link.
            self.lockfd = os.open(LOCK, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o600,
                                  dir_fd=self.dirfd)  # fmt: skip
            problem = _owned_problem(os.fstat(self.lockfd), self.directory / LOCK)
            if problem is not None:
                raise UnsafeCache(problem)
            fcntl.flock(self.lockfd, fcntl.LOCK_EX)
            # Step CACHE-2: every file read from here is this user's own.
            for name in (*NGCLIENT_FILES, WITHDRAWN_MARKER):
                self._check_file(name)
            self._check_root_history()
        except OSError as exc:
            self._close()
            raise UnsafeCache(f"{self.directory}: {exc.strerror or exc}") from None
        except BaseException:
            self._close()
            raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close()

    def _close(self) -> None:
        for fd in (self.lockfd, self.dirfd):
            if fd >= 0:
                os.close(fd)
        self.lockfd = self.dirfd = -1

    def _check_file(self, name: str) -> None:
        try:
            info = os.stat(name, dir_fd=self.dirfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if name == "root.json" and stat.S_ISLNK(info.st_mode):
            # ngclient's own link to its current root; nothing else may be linked.
            target = os.readlink(name, dir_fd=self.dirfd)
            if not ROOT_LINK.fullmatch(target) or info.st_uid != os.geteuid():
                raise UnsafeCache(f"{self.directory / name}: links to {target!r}")
            return
        problem = _owned_problem(info, self.directory / name)
        if problem is not None:
            raise UnsafeCache(problem)

    def _check_root_history(self) -> None:
        """ngclient's ``root_history/N.root.json``: the directory and each file ours."""
        try:
            fd = os.open(ROOT_HISTORY, os.O_RDONLY | os.O_DIRECTORY | _NOFOLLOW,
                         dir_fd=self.dirfd)  # fmt: skip
        except FileNotFoundError:
            return
        try:
            where = self.directory / ROOT_HISTORY
            problem = _owned_problem(os.fstat(fd), where, directory=True)
            names = os.listdir(fd) if problem is None else []
            for name in names[:_MAX_ROOTS]:
                info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                problem = problem or _owned_problem(info, where / name)
            if len(names) > _MAX_ROOTS:
                problem = problem or f"{where}: more than {_MAX_ROOTS} files"
        finally:
            os.close(fd)
        if problem is not None:
            raise UnsafeCache(problem)

    # -- the withdrawal marker ------------------------------------------------------------

    def withdrawn_above(self) -> int | None:
        """The timestamp version a remembered withdrawal requires a publish to exceed, or
        None if no withdrawal is remembered."""
        try:
            fd = os.open(WITHDRAWN_MARKER, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW,
                         dir_fd=self.dirfd)  # fmt: skip
        except FileNotFoundError:
            return None
        try:
            problem = _owned_problem(os.fstat(fd), self.directory / WITHDRAWN_MARKER)
            if problem is not None:
                raise UnsafeCache(problem)
            data = os.read(fd, _MAX_MARKER_BYTES)
        finally:
            os.close(fd)
        try:
            version = json.loads(data)["above_timestamp_version"]
        except (ValueError, KeyError, TypeError):
            version = None
        # A marker that says nothing usable still means a withdrawal was seen: the cached
        # timestamp's version is then the floor (it is what the daemon withdrew or older).
        if type(version) is not int or version < 0:
            return self.cached_timestamp_version()
        return version

    def remember_withdrawal(self, above: int) -> None:
        """Durably: a withdrawal was seen; no timestamp at or below ``above`` counts."""
        current = self.withdrawn_above()
        if current is not None and current >= above:
            return
        data = json.dumps({"above_timestamp_version": above}).encode()
        tmp = f".{WITHDRAWN_MARKER}.{os.urandom(6).hex()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600,
                     dir_fd=self.dirfd)  # fmt: skip
        try:
            os.write(fd, data)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(tmp, dir_fd=self.dirfd)
            raise
        os.close(fd)
        os.replace(tmp, WITHDRAWN_MARKER, src_dir_fd=self.dirfd, dst_dir_fd=self.dirfd)
        os.fsync(self.dirfd)

    def forget_withdrawal(self) -> None:
        """A newer publish verified: the withdrawal is over (durably, and only once the
        metadata that ended it is durable too, or a crash could leave the older set
        cached with no marker)."""
        for name in NGCLIENT_FILES[1:]:  # not root.json: ngclient's link (roots are signed
            try:  # by the pinned chain, never a rollback vector)
                fd = os.open(name, os.O_RDONLY | _NOFOLLOW, dir_fd=self.dirfd)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        try:
            os.unlink(WITHDRAWN_MARKER, dir_fd=self.dirfd)
        except FileNotFoundError:
            return
        os.fsync(self.dirfd)

    def cached_timestamp_version(self) -> int:
        """The version of the timestamp ngclient last trusted here (0 if none)."""
        return timestamp_version(self._read("timestamp.json")) or 0

    def _read(self, name: str, limit: int = 1 << 20) -> bytes | None:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW, dir_fd=self.dirfd)
        except FileNotFoundError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return os.read(fd, limit)
        finally:
            os.close(fd)


def timestamp_version(data: bytes | None) -> int | None:
    """The version a timestamp file claims, unverified (only ever used to fail closed
    longer: a higher claimed version can only keep a withdrawal in force)."""
    if not data:
        return None
    try:
        version = json.loads(data)["signed"]["version"]
    except (ValueError, KeyError, TypeError):
        return None
    return version if type(version) is int and version >= 0 else None
