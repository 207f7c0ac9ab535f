"""``open_trusted``: a verified, read-only fd on a trusted artifact, with no copy.

For local runtimes (llama.cpp, vLLM, transformers...) that open a model by path and mmap
it: ask the daemon's consumer socket for a trusted name or digest, receive an fd on the
very object the registry verified (``SCM_RIGHTS``), and give the runtime its path
``/proc/self/fd/N``. Opening that path reopens the same inode, read-only (objects are
0444), whatever directory the store sits in. Nothing is copied, so nothing unverified is
left behind for anyone to change.

Standard library only: no trio, Quart or hypercorn (a test imports this package with
them blocked). Errors are the registry's typed errors, by their stable codes.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import os
import socket
import stat
import struct
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from assay.consumer.protocol import (
    DEFAULT_SOCKET,
    MAX_ANSWER_BYTES,
    SERVER_UIDS_ENV,
    SOCKET_ENV,
    BadAnswer,
    Header,
    decode_answer,
    encode_request,
)
from assay.core.errors import AuthError, IntegrityError

#: sun_path holds 108 bytes; a longer path is reached through its directory's fd.
MAX_SUN_PATH = 100
DEFAULT_TIMEOUT = 60.0


class SocketUnreachable(Exception):
    """Nothing serves the consumer socket at that path (the CLI's exit 7)."""


class UntrustedServer(IntegrityError):
    """The process that listens on the socket is not one this consumer trusts to vouch
    for bytes (a socket squatted by another user would hand out any file it likes)."""

    code = "consumer.untrusted_server"
    title = "The consumer socket is not served by a trusted user"


class PeerRefused(AuthError):
    """The socket file's mode and group refuse this user: it may not even connect."""

    code = "auth.peer_refused"
    title = "Not allowed to connect to the consumer socket"


@dataclass
class TrustedFile:
    """An open, read-only fd on a trusted artifact, and what the daemon says it holds.

    ``path`` (``/proc/self/fd/N``) is valid in this process, and in a program it
    ``exec``s once the fd is inheritable (``assay exec`` does that). Close it when done;
    it is also a context manager.
    """

    fd: int
    digest: str
    size: int
    name: str
    format: str
    verified_at: str
    _closed: bool = field(default=False, repr=False)

    @property
    def path(self) -> str:
        return f"/proc/self/fd/{self.fd}"

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self.fd)

    def __enter__(self) -> TrustedFile:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def resolve_socket(given: str | os.PathLike[str] | None = None) -> str:
    """The socket to ask: ``given``, else ``$ASSAY_CONSUMER_SOCKET``, else the packaged one."""
    return os.fspath(given) if given is not None else os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET


def open_trusted(
    name_or_digest: str,
    *,
    socket_path: str | os.PathLike[str] | None = None,
    token: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    server_uids: Collection[int] | None = None,
) -> TrustedFile:
    """A ``TrustedFile`` for a trusted name (its current trusted digest) or a digest.

    Without ``token`` the daemon knows this process by its uid and groups. The socket
    must be listened on by a uid in ``server_uids`` (default: root, which is systemd for
    the packaged socket, this process's own uid, and any in ``$ASSAY_CONSUMER_SERVER_UIDS``,
    comma-separated). Raises the registry's typed errors (``NotTrusted``,
    ``StoredBytesCorrupt``, ``ScopeDenied``, ``NotFound``...), ``PeerRefused`` when this
    user may not connect, ``UntrustedServer`` and ``SocketUnreachable``.
    """
    request = encode_request(name_or_digest, token)
    path = resolve_socket(socket_path)
    allowed = set(server_uids) if server_uids is not None else default_server_uids()
    with _connected(path, timeout) as conn:
        # Step C-0 (who answers): the kernel's word on the listening process's uid.
        _check_server(conn, allowed, path)
        # Step C-1 (ask): one message; the answer is one message too.
        conn.send(request)
        header, fds = _receive(conn)
    # Step C-2 (check the fd): exactly one, a regular file of the announced size, opened
    # read-only, and writable by nobody but root: what the daemon promises to send.
    try:
        if len(fds) != 1:
            raise BadAnswer(f"expected one fd with the header, got {len(fds)}")
        _check_fd(fds[0], header)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return TrustedFile(
        fd=fds[0],
        digest=header.digest,
        size=header.size,
        name=header.name,
        format=header.format,
        verified_at=header.verified_at,
    )


def default_server_uids() -> set[int]:
    """Root, this process's uid, and ``$ASSAY_CONSUMER_SERVER_UIDS``."""
    uids = {0, os.geteuid()}
    for item in os.environ.get(SERVER_UIDS_ENV, "").split(","):
        if item.strip().isdigit():
            uids.add(int(item.strip()))
    return uids


def _check_server(conn: socket.socket, allowed: set[int], path: str) -> None:
    raw = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("iII"))
    _pid, uid, _gid = struct.unpack("iII", raw)
    if uid not in allowed:
        raise UntrustedServer(
            f"{path} is served by uid {uid}, not one of {sorted(allowed)} (set "
            f"{SERVER_UIDS_ENV} to trust it)"
        )


@contextlib.contextmanager
def _connected(path: str, timeout: float) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout)
        try:
            _connect(sock, path)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError) as exc:
            raise SocketUnreachable(f"{path}: {exc.strerror}") from None
        except PermissionError:
            raise PeerRefused(
                f"{path}: this user may not connect (not in the socket's group?)"
            ) from None
        except TimeoutError:
            raise SocketUnreachable(f"{path}: connect timed out") from None
        yield sock
    finally:
        sock.close()


def _connect(sock: socket.socket, path: str) -> None:
    """Connect to ``path``; one too long for sun_path through its directory's fd."""
    if len(os.fsencode(path)) <= MAX_SUN_PATH:
        sock.connect(path)
        return
    where = Path(path)
    dirfd = os.open(where.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sock.connect(f"/proc/self/fd/{dirfd}/{where.name}")
    finally:
        os.close(dirfd)


def _receive(conn: socket.socket) -> tuple[Header, list[int]]:
    """The answer and every fd that came with it (each closed if the answer is refused)."""
    cmsg_space = socket.CMSG_SPACE(array.array("i").itemsize * 4)
    try:
        data, ancdata, flags, _addr = conn.recvmsg(
            MAX_ANSWER_BYTES + 1, cmsg_space, socket.MSG_CMSG_CLOEXEC
        )
    except TimeoutError:
        raise SocketUnreachable("the consumer socket did not answer in time") from None
    except OSError as exc:
        raise SocketUnreachable(f"reading the answer failed: {exc.strerror}") from None
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got = array.array("i")
            got.frombytes(payload[: len(payload) - len(payload) % got.itemsize])
            fds.extend(got)
    try:
        if not data:
            raise SocketUnreachable("the daemon closed the connection without an answer")
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise BadAnswer("the answer or its fds were cut short")
        header = decode_answer(data)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return header, fds


def _check_fd(fd: int, header: Header) -> None:
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        raise BadAnswer("the fd is not a regular file")
    if info.st_size != header.size:
        raise BadAnswer(f"the file holds {info.st_size} bytes, the header says {header.size}")
    if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY:
        raise BadAnswer("the fd is not read-only")
    if stat.S_IMODE(info.st_mode) & 0o222:
        raise BadAnswer(f"the object is writable (mode {stat.S_IMODE(info.st_mode):o})")


__all__ = [
    "PeerRefused",
    "SocketUnreachable",
    "TrustedFile",
    "UntrustedServer",
    "open_trusted",
    "resolve_socket",
]
