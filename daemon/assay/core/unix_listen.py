"""A listening Unix stream socket whose file has its mode before anyone can connect.

Why not hypercorn's ``unix:`` bind: it binds at the final path under the process umask
(0755-ish on most hosts) and leaves the mode there, so every local user could connect
to the admin listener; it also removes whatever socket is at the path, live or not.
Here, as for the registry's consumer socket (``assay.registry.consumer_socket``), the
socket is bound at a temporary name beside the path, given its mode, made to listen and
only then renamed into place; a live socket already at the path is refused, a dead one
(left by a crash) replaced. The directory, and every one above it, must be one nobody
else can rename things in (``trusted_files.check_ancestors``). Blocking.
"""

from __future__ import annotations

import os
import secrets
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from assay.core.errors import ConfigError, StorageError
from assay.core.trusted_files import check_ancestors

#: sun_path holds 108 bytes; longer paths are bound through their directory's fd.
MAX_SUN_PATH = 100
BACKLOG = 128


@dataclass
class UnixListener:
    """The listening socket, and the file this process made for it (removed at close)."""

    sock: socket.socket
    path: Path
    inode: int

    def close(self) -> None:
        """Idempotent: the socket, then the file, only while it is still the one made."""
        self.sock.close()
        try:
            if os.lstat(self.path).st_ino == self.inode:
                self.path.unlink()
        except OSError:
            pass
        self.inode = -1


def bind_stream(path: Path, mode: int, *, where: str) -> UnixListener:
    """A listening ``SOCK_STREAM`` socket at ``path`` with file mode ``mode``."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    except OSError as exc:
        raise StorageError(f"{where}: creating {path.parent} failed: {exc.strerror}") from None
    check_ancestors(path)
    _clear_stale(path, where)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with _Short(tmp) as short:
            sock.bind(short)
        try:
            os.chmod(tmp, mode)
            sock.listen(BACKLOG)
            inode = os.lstat(tmp).st_ino
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except OSError as exc:
        sock.close()
        raise StorageError(f"{where}: creating {path} failed: {exc.strerror}") from None
    return UnixListener(sock, path, inode)


def _clear_stale(path: Path, where: str) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(f"{where}: {path} exists and is not a socket", path=where)
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        with _Short(path) as short:
            probe.connect(short)
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # left by a process that is gone
        return
    except OSError as exc:
        raise StorageError(f"{where}: {path} is unusable: {exc.strerror}") from None
    finally:
        probe.close()
    raise StorageError(f"{where}: {path} is served by another process")


class _Short:
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
