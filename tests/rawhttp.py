"""One HTTP/1.1 exchange over a raw socket: the bytes an attacker chooses, not a client's.

Why not httpx: a client library normalises what it sends (percent-encodes paths, refuses
NULs and bare CRs in headers, always adds Host), so it cannot send the requests the
edge must survive. Each exchange is one connection, bounded in time and size; the
answer is read by h11 (one parser decides where it ends), not until the server closes.
"""

from __future__ import annotations

import contextlib
import json
import socket
from dataclasses import dataclass
from typing import Any

import h11

MAX_RESPONSE = 1024 * 1024
MAX_EVENTS = 10_000


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def exchange(port: int, data: bytes, *, timeout: float = 5.0) -> RawResponse | None:
    """Send ``data``; the first response, parsed, or None if the server closed without one.

    No half-close: hypercorn takes EOF from the client as the client leaving, and may
    drop the answer.
    """
    conn = h11.Connection(h11.CLIENT)
    # The answer's framing depends on the method asked (HEAD: a head, never a body).
    method = "HEAD" if data.startswith(b"HEAD ") else "GET"
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    status, headers, body = 0, {}, bytearray()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # The server may close on us mid-send; its answer may still be there.
        with contextlib.suppress(OSError):
            sock.sendall(data)
        received = 0
        for _ in range(MAX_EVENTS):
            event = conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    chunk = sock.recv(65536)
                except (TimeoutError, ConnectionResetError):
                    chunk = b""
                received += len(chunk)
                if received > MAX_RESPONSE:
                    raise AssertionError("response larger than expected")
                conn.receive_data(chunk)
            elif isinstance(event, h11.Response):
                status = event.status_code
                headers = {k.decode().lower(): v.decode("latin-1") for k, v in event.headers}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.InformationalResponse):
                continue
            else:  # EndOfMessage, or ConnectionClosed before any response
                break
    return RawResponse(status, headers, bytes(body)) if status else None


def request(
    method: bytes,
    target: bytes,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
    *,
    host: bool = True,
) -> bytes:
    """A request head as bytes, with ``Connection: close``; nothing is validated."""
    lines = [method + b" " + target + b" HTTP/1.1"]
    if host:
        lines.append(b"Host: 127.0.0.1")
    lines += [k + b": " + v for k, v in headers]
    lines.append(b"Connection: close")
    if body:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
