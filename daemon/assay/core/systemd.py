"""systemd integration at the edge: sd_notify, watchdog interval, socket activation fds.

Every function is a no-op outside systemd, so the same daemon runs in a terminal.
"""

from __future__ import annotations

import os
import socket

import sdnotify

SD_LISTEN_FDS_START = 3
#: ``FileDescriptorName=`` of the registry's consumer socket (``assay-consumer.socket``):
#: not HTTP, so ``listen_fds`` leaves it out and the consumer server takes it by name.
CONSUMER_FD_NAME = "consumer"


class Notifier:
    """Thin wrapper over sdnotify; silent when ``$NOTIFY_SOCKET`` is unset."""

    def __init__(self) -> None:
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self._n = sdnotify.SystemdNotifier() if self.enabled else None

    def send(self, message: str) -> None:
        # sdnotify sends one datagram on a unix socket: non-blocking in practice.
        if self._n is not None:
            self._n.notify(message)

    def ready(self, status: str) -> None:
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def stopping(self) -> None:
        self.send("STOPPING=1\nSTATUS=stopping")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")


def watchdog_interval() -> float | None:
    """Half of ``WatchdogSec=`` in seconds, if systemd asked this process for pings."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


def _passed() -> list[tuple[int, str]]:
    """(fd, name) of every fd passed by socket activation, for this pid only. Names come
    from ``LISTEN_FDNAMES`` (``FileDescriptorName=``); "" where systemd gave none."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    count = int(os.environ.get("LISTEN_FDS", "0"))
    names = os.environ.get("LISTEN_FDNAMES", "").split(":")
    if len(names) != count:
        names = [""] * count
    return [(SD_LISTEN_FDS_START + i, names[i]) for i in range(count)]


def listen_fds() -> list[int]:
    """The HTTP fds passed by socket activation: all but the consumer socket's, in the
    order systemd passed them."""
    return [fd for fd, name in _passed() if name != CONSUMER_FD_NAME]


def listen_fds_named(name: str) -> list[int]:
    """The passed fds whose ``FileDescriptorName=`` is ``name``."""
    return [fd for fd, fd_name in _passed() if fd_name == name]


def is_socket(fd: int) -> bool:
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return False
    sock.close()
    return True
