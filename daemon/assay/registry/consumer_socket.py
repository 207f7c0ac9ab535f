"""The consumer socket at the edge: where it listens, who is at the other end, and a thin
trio loop that hands each connection to the ``ConsumerGate``.

``SOCK_SEQPACKET`` over ``AF_UNIX``: one message each way, so the JSON header and its fd
(``SCM_RIGHTS``) arrive together or not at all. Under systemd the socket is
``assay-consumer.socket`` (``FileDescriptorName=consumer``, group ``assay-consumers``,
mode 0660); outside it, ``consumer.socket`` in the config names a path, created with
``consumer.socket_mode`` and ``consumer.socket_group`` before anyone can connect.

Bounds: at most ``max_connections`` connections at once (others wait in the kernel's
backlog), and a peer gets ``request_timeout_seconds`` to send its request and again to
take its answer, so one that connects and sends nothing holds a slot only that long.
Fds a peer sends are never received (the ancillary buffer holds credentials only; the
kernel drops fds that do not fit).

Who sent a request: ``SO_PASSCRED`` is set on the listening socket (accepted sockets
inherit it, and a message sent before the accept carries credentials anyway), so the
kernel attaches ``SCM_CREDENTIALS`` to every message: the sender's own pid and real uid
and gid, or ones it claims that the kernel checked it may claim. The request is
authorized as that sender (``consumers.sender_of``), not as whoever called ``connect()``
(``SO_PEERCRED``, frozen then). The credentials also tell a zero-length request, which
carries them, from a hang-up, which carries nothing.
"""

from __future__ import annotations

import array
import errno
import grp
import logging
import os
import secrets
import socket
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import trio

from assay.consumer.protocol import MAX_REQUEST_BYTES
from assay.core.errors import ConfigError, StorageError
from assay.core.systemd import CONSUMER_FD_NAME, listen_fds_named
from assay.core.trusted_files import check_parent
from assay.registry.consumer_gate import ConsumerGate
from assay.registry.consumers import ConsumerSection, Peer, sender_of

log = logging.getLogger("assay.consumer")

#: ``SO_PEERGROUPS`` (Linux >= 4.13); Python 3.11's socket module lacks the constant.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
#: ``getsockopt`` buffers are at most 1024 bytes in CPython: 256 gids. A peer in more
#: groups is known by its primary group alone (fewer groups can only match fewer rules).
MAX_PEER_GROUPS = 256
#: sun_path holds 108 bytes; longer paths are bound through their directory's fd.
MAX_SUN_PATH = 100
BACKLOG = 128
#: ``struct ucred``: pid, uid, gid (as SO_PEERCRED and SCM_CREDENTIALS give them).
UCRED = struct.Struct("iII")
SCM_CREDENTIALS = getattr(socket, "SCM_CREDENTIALS", 2)
#: Room for one SCM_CREDENTIALS and nothing more: fds a peer attaches do not fit.
CRED_SPACE = socket.CMSG_SPACE(UCRED.size)


@dataclass
class Listener:
    """The listening socket, and the path this daemon made for it (removed at close)."""

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


def gid_of(group: str | int, *, where: str) -> int:
    """A group name or gid as a gid; an unknown name stops startup."""
    if isinstance(group, int):
        return group
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"{where}: no group named {group!r}", path=where) from None


def group_ids(section: ConsumerSection) -> dict[str, int]:
    """Every group name the principals use, resolved once, at startup."""
    return {
        name: gid_of(name, where=f"consumer.principals[{i}].groups")
        for i, p in enumerate(section.principals)
        for name in p.groups
    }


def open_listener(section: ConsumerSection, path: Path | None) -> Listener | None:
    """systemd's fd named ``consumer`` if one was passed, else a socket made at ``path``;
    None if neither (the feature is off). Blocking."""
    fds = listen_fds_named(CONSUMER_FD_NAME)
    if fds:
        sock = socket.socket(fileno=fds[0])
        if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
            sock.detach()
            raise ConfigError(
                "the socket passed as 'consumer' is not AF_UNIX SOCK_SEQPACKET "
                "(ListenSequentialPacket= in assay-consumer.socket)"
            )
        sock.set_inheritable(False)
        pass_credentials(sock)
        return Listener(sock)
    if path is None:
        return None
    gid = gid_of(section.socket_group, where="consumer.socket_group") if (
        section.socket_group is not None) else -1  # fmt: skip
    return _bind_path(path, section.socket_mode, gid)


def _bind_path(path: Path, mode: int, gid: int) -> Listener:
    """Bind at a temporary name beside ``path``, set its mode and group, listen, then
    rename it into place: nobody can connect before the mode and group are right.

    A socket already at ``path`` is replaced only if nothing answers on it (left by a
    crash); a live one means another daemon serves it, and anything else is refused.
    The directory must be one nobody else can rename things in (``check_parent``: not
    writable by group or others unless sticky, owned by root or this daemon's user), or
    the chmod and chown by name could be pointed at another file.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    except OSError as exc:
        raise StorageError(f"creating {path.parent} failed: {exc.strerror}") from None
    check_parent(path)
    try:
        _clear_stale(path)
    except OSError as exc:
        raise StorageError(f"consumer socket {path} is unusable: {exc.strerror}") from None
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        with _short(tmp) as short:
            sock.bind(short)
        try:
            pass_credentials(sock)
            os.chmod(tmp, mode)
            if gid >= 0:
                os.chown(tmp, -1, gid)
            sock.listen(BACKLOG)
            inode = os.lstat(tmp).st_ino
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except PermissionError as exc:
        sock.close()
        raise ConfigError(
            f"consumer.socket: cannot create {path} with group {gid}: {exc.strerror} "
            "(the daemon must be in consumer.socket_group)",
            path="consumer.socket",
        ) from None
    except OSError as exc:
        sock.close()
        raise StorageError(f"creating the consumer socket {path} failed: {exc.strerror}") from None
    return Listener(sock, path, inode)


def _clear_stale(path: Path) -> None:
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ConfigError(f"consumer.socket: {path} exists and is not a socket",
                          path="consumer.socket")  # fmt: skip
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
    try:
        with _short(path) as short:
            probe.connect(short)
    except (ConnectionRefusedError, FileNotFoundError):
        path.unlink(missing_ok=True)  # left by a daemon that is gone
        return
    except OSError as exc:
        if exc.errno == errno.EPROTOTYPE:  # a stream socket: something else's, maybe live
            raise ConfigError(f"consumer.socket: {path} is another kind of socket",
                              path="consumer.socket") from None  # fmt: skip
        raise StorageError(f"consumer socket {path} is unusable: {exc.strerror}") from None
    finally:
        probe.close()
    raise StorageError(f"consumer socket {path} is served by another process")


class _short:
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


def pass_credentials(sock: socket.socket | trio.socket.SocketType) -> None:
    """``SO_PASSCRED``: every message received carries its sender's ``SCM_CREDENTIALS``."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)


def peer_of(sock: trio.socket.SocketType) -> Peer:
    """``SO_PEERCRED`` (pid, uid, gid) and ``SO_PEERGROUPS`` of whoever connected."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, UCRED.size)
    pid, uid, gid = UCRED.unpack(raw)
    groups: Iterable[int] = ()
    try:
        data = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, 4 * MAX_PEER_GROUPS)
        got = array.array("I")
        got.frombytes(data[: len(data) - len(data) % 4])
        groups = got
    except OSError as exc:  # ERANGE: more groups than fit; ENOPROTOOPT: old kernel
        log.warning("peer pid %d: its groups are unknown (%s); primary gid only", pid, exc)
    return Peer(pid=pid, uid=uid, gid=gid, groups=frozenset(groups) | {gid})


def sent_credentials(ancillary: list[tuple[int, int, bytes]]) -> tuple[int, int, int] | None:
    """The ``SCM_CREDENTIALS`` (pid, uid, gid) a received message carried, if any."""
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == SCM_CREDENTIALS and len(payload) >= UCRED.size:
            pid, uid, gid = UCRED.unpack(payload[: UCRED.size])
            return pid, uid, gid
    return None


async def serve(
    listener: Listener,
    gate: ConsumerGate,
    *,
    max_connections: int,
    request_seconds: float,
    shutdown: trio.Event,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept until ``shutdown``, then let the connections in flight finish (each is
    bounded by ``request_seconds`` each way and its handoff) and return."""
    sock = trio.socket.from_stdlib_socket(listener.sock)
    slots = trio.Semaphore(max_connections)
    async with trio.open_nursery() as connections:
        with trio.CancelScope() as accepting:
            connections.start_soon(_cancel_on, shutdown, accepting)
            task_status.started()
            while True:
                await slots.acquire()
                try:
                    conn, _addr = await sock.accept()
                except OSError as exc:  # EMFILE and the like: back off, keep serving
                    slots.release()
                    log.error("consumer socket: accept failed: %s", exc.strerror)  # noqa: TRY400
                    await trio.sleep(0.1)
                    continue
                connections.start_soon(_connection, conn, gate, request_seconds, slots)


async def _cancel_on(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


async def _connection(
    conn: trio.socket.SocketType, gate: ConsumerGate, seconds: float, slots: trio.Semaphore
) -> None:
    fd: int | None = None
    try:
        with conn:
            connected = peer_of(conn)
            pass_credentials(conn)
            raw: bytes | None = None
            sent: tuple[int, int, int] | None = None
            with trio.move_on_after(seconds):
                raw, creds, _flags, _addr = await conn.recvmsg(MAX_REQUEST_BYTES + 1, CRED_SPACE)
                sent = sent_credentials(creds)
                if raw == b"" and sent is None:
                    return  # end of stream, no message: the peer hung up without asking
            # A message (even a zero-length one) is a request, authorized as its sender.
            peer = sender_of(sent, connected) if raw is not None else connected
            answer, fd = await gate.answer(raw, peer)
            ancillary = [] if fd is None else [
                (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))]  # fmt: skip
            with trio.move_on_after(seconds) as sending:
                await conn.sendmsg([answer], ancillary)
            if sending.cancelled_caught:
                log.warning("consumer pid %d did not take its answer in time", peer.pid)
    except OSError as exc:
        log.info("consumer connection ended early: %s", exc.strerror or exc)
    finally:
        if fd is not None:
            os.close(fd)
        slots.release()
