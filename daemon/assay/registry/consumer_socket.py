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
import grp
import logging
import os
import socket
import struct
from collections.abc import Iterable
from pathlib import Path

import trio

from assay.consumer.protocol import MAX_REQUEST_BYTES
from assay.core import unix_listen
from assay.core.errors import ConfigError
from assay.core.systemd import CONSUMER_FD_NAME, listen_fds_named
from assay.registry.consumer_gate import ConsumerGate
from assay.registry.consumers import ConsumerSection, Peer, sender_of

log = logging.getLogger("assay.consumer")

#: ``SO_PEERGROUPS`` (Linux >= 4.13); Python 3.11's socket module lacks the constant.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
#: ``getsockopt`` buffers are at most 1024 bytes in CPython: 256 gids. A peer in more
#: groups is known by its primary group alone (fewer groups can only match fewer rules).
MAX_PEER_GROUPS = 256
#: ``struct ucred``: pid, uid, gid (as SO_PEERCRED and SCM_CREDENTIALS give them).
UCRED = struct.Struct("iII")
SCM_CREDENTIALS = getattr(socket, "SCM_CREDENTIALS", 2)
#: Room for one SCM_CREDENTIALS and nothing more: fds a peer attaches do not fit.
CRED_SPACE = socket.CMSG_SPACE(UCRED.size)


#: The listening socket and the file made for it (``assay.core.unix_listen``).
Listener = unix_listen.UnixListener


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
    """``unix_listen.bind`` as ``SOCK_SEQPACKET`` with ``SO_PASSCRED`` set before it
    listens: mode and group are right before anyone can connect, a live socket at
    ``path`` is refused and a dead one (left by a crash) replaced."""
    try:
        return unix_listen.bind(path, mode, where="consumer.socket",
                                kind=socket.SOCK_SEQPACKET, gid=gid,
                                prepare=pass_credentials)  # fmt: skip
    except PermissionError as exc:
        raise ConfigError(
            f"consumer.socket: cannot create {path} with group {gid}: {exc.strerror} "
            "(the daemon must be in consumer.socket_group)",
            path="consumer.socket",
        ) from None


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
