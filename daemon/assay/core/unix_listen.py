"""A listening Unix socket whose file has its mode before anyone can connect.

Why not hypercorn's ``unix:`` bind: it binds at the final path under the process umask
(0755-ish on most hosts) and leaves the mode there, so every local user could connect
to the admin listener; it also removes whatever socket is at the path, live or not.
Here (for the admin listener and the registry's consumer socket alike) the socket is
bound at a temporary name beside the path, given its mode, made to listen and only then
renamed into place; a live socket already at the path is refused, a dead one (left by a
crash) replaced. The directory must be one nobody else can rename things in
(``trusted_files.check_parent``). Blocking.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from assay.core.errors import ConfigError, StorageError
from assay.core.trusted_files import check_parent

#: sun_path holds 108 bytes; longer paths are bound through their directory's fd.
MAX_SUN_PATH = 100
BACKLOG = 128


@dataclass
class UnixListener:
    """The listening socket, and the file this process made for it (removed at close);
    ``path`` is None for a socket systemd passed, which is never this process's to remove."""

    sock: socket.socket
    path: Path | None = None
    inode: int = 0

    def close(self) -> None:
        """Idempotent: the socket, then the file, only while it is still the one made."""
        self.sock.close()
        path, self.path = self.path, None
        if path is None:
            return
        try:
            if os.lstat(path).st_ino == self.inode:
                path.unlink()
        except OSError:
            pass


def bind_stream(path: Path, mode: int, *, where: str) -> UnixListener:
    """A listening ``SOCK_STREAM`` socket at ``path`` with file mode ``mode``."""
    return bind(path, mode, where=where)


def bind(
    path: Path,
    mode: int,
    *,
    where: str,
    kind: int = socket.SOCK_STREAM,
    gid: int = -1,
    prepare: Callable[[socket.socket], None] | None = None,
) -> UnixListener:
    """Bind a socket of ``kind`` at a temporary name beside ``path``, run ``prepare`` on
    it, give it ``mode`` (and group ``gid`` unless -1), listen, then rename it into
    place: nobody can connect before the mode and group are right.

    The directory must be one nobody else can rename things in (``check_parent``), or
    the chmod and chown by name could be pointed at another file. A ``PermissionError``
    from the chown is the caller's to explain (it knows which group setting it was).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    except OSError as exc:
        raise StorageError(f"{where}: creating {path.parent} failed: {exc.strerror}") from None
    check_parent(path)
    clear_stale(path, where, kind)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    sock = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
    try:
        with ShortPath(tmp) as short:
            sock.bind(short)
        try:
            if prepare is not None:
                prepare(sock)
            os.chmod(tmp, mode)
            if gid >= 0:
                os.chown(tmp, -1, gid)
            sock.listen(BACKLOG)
            inode = os.lstat(tmp).st_ino
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except PermissionError:
        sock.close()
        raise
    except OSError as exc:
        sock.close()
        raise StorageError(f"{where}: creating {path} failed: {exc.strerror}") from None
    return UnixListener(sock, path, inode)


def clear_stale(path: Path, where: str, kind: int = socket.SOCK_STREAM) -> None:
    """Nothing at ``path``, or a socket nobody answers on (left by a crash, removed);
    anything else stops startup: a live socket, another kind of socket, not a socket."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StorageError(f"{where}: {path} is unusable: {exc.strerror}") from None
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(f"{where}: {path} exists and is not a socket", path=where)
    probe = socket.socket(socket.AF_UNIX, kind | socket.SOCK_CLOEXEC)
    try:
        with ShortPath(path) as short:
            probe.connect(short)
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # left by a process that is gone
        return
    except OSError as exc:
        if exc.errno == errno.EPROTOTYPE:  # another kind of socket: something else's
            raise ConfigError(f"{where}: {path} is another kind of socket", path=where) from None
        raise StorageError(f"{where}: {path} is unusable: {exc.strerror}") from None
    finally:
        probe.close()
    raise StorageError(f"{where}: {path} is served by another process")


class ShortPath:
    """A sun_path for ``path``: itself if short enough, else through its directory's fd."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.dirfd: int | None = None

    def __enter__(self) -> str:
        if len(os.fsencode(self.path)) <= MAX_SUN_PATH:
            return str(self.path)
        self.dirfd = os.open(self.path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return f"/proc/self/fd/{self.dirfd}/{self.path.name}"

    def __exit__(self, *exc: object) -> None:
        if self.dirfd is not None:
            os.close(self.dirfd)
