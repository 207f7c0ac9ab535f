"""Raw-socket helpers for the transport attack tests: bytes in, bytes out, nothing hidden.

The transport tests must send exactly what a hostile client would (bare LFs, split
segments, heads that never end), which no HTTP client library will. Every wait here is
bounded by a socket timeout and an iteration count.
"""

from __future__ import annotations

import http.client
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

TIMEOUT = 15.0


def connect(port: int, *, timeout: float = TIMEOUT) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def connect_unix(path: Path, *, timeout: float = TIMEOUT) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(path))
    return sock


def response(sock: socket.socket, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response read off ``sock`` (the socket stays usable for the next)."""
    resp = http.client.HTTPResponse(sock, method=method)
    resp.begin()
    body = resp.read()
    headers = {k.lower(): v for k, v in resp.getheaders()}
    # HTTPResponse reads through a buffered file; what it buffered past this response is
    # lost to the next read, so callers that pipeline use ``read_responses`` instead.
    return resp.status, headers, body


def closed_by_peer(sock: socket.socket, *, within: float = TIMEOUT) -> bool:
    """True once the peer closes (EOF or reset); False if it is still open after ``within``."""
    sock.settimeout(within)
    deadline = time.monotonic() + within
    for _ in range(10_000):
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        if time.monotonic() > deadline:
            return False
    return False


def trickle_until_closed(sock: socket.socket, data: bytes, *, pause: float, steps: int) -> bool:
    """Send ``data`` one byte per ``pause`` seconds; True if the peer cut us off first."""
    for i in range(min(steps, len(data))):
        try:
            sock.sendall(data[i : i + 1])
        except (BrokenPipeError, ConnectionResetError):
            return True
        sock.settimeout(pause)
        try:
            if not sock.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            pass
    return False


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled(read: Callable[[], int], *, rounds: int = 100, pause: float = 0.1) -> int:
    """``read()`` once it gives the same value three times running (bounded)."""
    last, same = read(), 0
    for _ in range(rounds):
        time.sleep(pause)
        now = read()
        same = same + 1 if now == last else 0
        last = now
        if same >= 3:
            break
    return last


def socket_fds(pid: int) -> int:
    """How many of the process's fds are sockets (the listeners plus its connections)."""
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{name}").startswith("socket:"):
                count += 1
        except OSError:
            continue  # closed meanwhile
    return count


def open_connections(pid: int, port: int) -> int:
    """How many accepted TCP connections on ``port`` the process still holds open.

    Exact, unlike a count of socket descriptors: the process's socket inodes matched
    against the kernel's TCP table (``/proc/net/tcp``, ``tcp6``), listeners excluded.
    """
    inodes: set[str] = set()
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            local_port = int(fields[1].rpartition(":")[2], 16)
            state, inode = fields[3], fields[9]
            if local_port == port and state != "0A" and inode in inodes:  # 0A: LISTEN
                count += 1
    return count


def object_fds(pid: int, store: Path) -> int:
    """How many of the process's fds are open on files under ``store``."""
    count = 0
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith(str(store)):
            count += 1
    return count
