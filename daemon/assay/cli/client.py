"""A small HTTP client for the daemon (stdlib ``http.client``: streaming, no extra deps).

The daemon's RFC 9457 problems are turned back into the same typed errors the daemon
raised, by their stable ``code``, keeping every member of the problem (``status``,
``reason``, ``reasons``, ...), so ``main()`` maps them to exit codes in one place and
``--json`` prints what the daemon said. ``http.client`` is imported when a request is
made, not when the command line is parsed (start-up time, ``benchmarks/bench_cli.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import quote, urlencode, urlsplit

from assay.cli.errors import InputUnreadable, Unreachable, UsageError
from assay.core import errors, problem
from assay.formats import errors as _format_errors  # noqa: F401 - registers codes
from assay.registry import errors as _registry_errors  # noqa: F401 - registers codes

if TYPE_CHECKING:
    import http.client

DEFAULT_URL = "http://127.0.0.1:8470"
URL_ENV = "ASSAY_URL"
TOKEN_ENV = "ASSAY_TOKEN"
TOKEN_FILE_ENV = "ASSAY_TOKEN_FILE"
CHUNK = 1024 * 1024
#: A token file holds one token; anything larger is not one.
MAX_TOKEN_FILE = 64 * 1024

__all__ = ["Client", "Unreachable", "check_url", "raise_problem"]


def raise_problem(status: int, body: bytes) -> None:
    """Raise the typed error a problem body names, with all of its members kept."""
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        parsed = {"detail": body[:200].decode(errors="replace"), "code": "http.error"}
    raise problem.to_error(status, parsed)


def check_url(value: str) -> str:
    """``http://host[:port]`` with nothing after the authority but an optional ``/``."""
    try:
        parts = urlsplit(value)
        port = parts.port
        # The host as it will be looked up: bytes that are not UTF-8, or a name IDNA
        # cannot encode, do not parse (UnicodeError is a ValueError).
        (parts.hostname or "").encode("idna")
    except ValueError:
        parts, port = None, None
    if (
        parts is None
        or parts.scheme != "http"
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        shown = value.encode("utf-8", "surrogateescape")[:200].decode("utf-8", "replace")
        raise UsageError(f"not a daemon URL: {shown!r} (use http://HOST:PORT)")
    del port  # parsed only to refuse a port that is not a number in range
    return value.rstrip("/")


def read_token_file(path: str, *, source: str = "--token-file") -> str:
    """The bearer token in ``path``, surrounding blanks removed.

    A regular file, or a pipe (``--token-file <(pass show assay)``); nothing else: a
    directory, a terminal, a socket or a device is refused, never read. Opened
    ``O_NONBLOCK``, so a FIFO nobody writes to is empty at once rather than an
    ``open()`` that waits forever; a pipe whose writer stays silent is given
    ``TOKEN_PIPE_SECONDS``. ``source`` names where the path came from in messages
    (``--token-file`` or ``$ASSAY_TOKEN_FILE``).
    """
    from assay.cli.paths import show

    label = f"{source} {show(path)}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        reason = getattr(exc, "strerror", None) or str(exc)[:200]
        raise InputUnreadable(f"cannot read {label}: {reason}") from None
    try:
        data = _read_bounded(fd, label)
    finally:
        os.close(fd)
    if len(data) > MAX_TOKEN_FILE:
        raise InputUnreadable(f"cannot read {label}: larger than a token")
    try:
        token = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InputUnreadable(f"cannot read {label}: not UTF-8 text") from None
    if not token or "\n" in token:
        raise InputUnreadable(f"cannot read {label}: not one token on one line")
    return token


#: How long a pipe named as the token file may stay silent before it is refused.
TOKEN_PIPE_SECONDS = 10.0


def _read_bounded(fd: int, label: str) -> bytes:
    """At most ``MAX_TOKEN_FILE + 1`` bytes of a regular file or a pipe, in bounded time."""
    import select
    import stat
    import time

    mode = os.fstat(fd).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode)):
        raise InputUnreadable(f"cannot read {label}: not a regular file or a pipe")
    chunks: list[bytes] = []
    total = 0
    deadline = time.monotonic() + TOKEN_PIPE_SECONDS
    for _ in range(MAX_TOKEN_FILE + 2):  # bounded: every pass reads a byte or ends
        try:
            chunk = os.read(fd, MAX_TOKEN_FILE + 1 - total)
        except BlockingIOError:  # a pipe whose writer has not written (yet)
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise InputUnreadable(
                    f"cannot read {label}: nothing was written to the pipe "
                    f"in {TOKEN_PIPE_SECONDS:.0f} s"
                ) from None
            continue
        except OSError as exc:
            raise InputUnreadable(f"cannot read {label}: {exc.strerror or exc}") from None
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > MAX_TOKEN_FILE:
            break
    return b"".join(chunks)


class Client:
    """The daemon at ``url``, with a bearer token (a plain class: ``dataclasses`` costs
    15 ms of start-up, ``benchmarks/bench_cli.py``)."""

    def __init__(self, url: str, token: str | None, timeout: float = 60.0) -> None:
        self.url = url
        self.token = token
        self.timeout = timeout

    @classmethod
    def from_args(cls, url: str | None, token_file: str | None) -> Client:
        """``--url``, else ``$ASSAY_URL``, else the default; ``--token-file``, else
        ``$ASSAY_TOKEN_FILE``, else the token in ``$ASSAY_TOKEN``."""
        env_url = os.environ.get(URL_ENV)
        base = check_url(url or env_url or DEFAULT_URL)
        token = os.environ.get(TOKEN_ENV)
        if token_file:
            token = read_token_file(token_file)
        elif os.environ.get(TOKEN_FILE_ENV):
            token = read_token_file(os.environ[TOKEN_FILE_ENV], source=f"${TOKEN_FILE_ENV}")
        return cls(base.rstrip("/"), token)

    def _conn(self) -> http.client.HTTPConnection:
        import http.client

        parts = urlsplit(self.url)
        assert parts.hostname  # check_url
        return http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=self.timeout)

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "assay-cli"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        headers.update(extra or {})
        return headers

    def request(
        self, method: str, path: str, body: Any = None, query: dict[str, Any] | None = None
    ) -> tuple[dict[str, Any], dict[str, str]]:
        import http.client

        conn = self._conn()
        data = None if body is None else json.dumps(body).encode()
        headers = self._headers({"Content-Type": "application/json"} if data is not None else None)
        target = path + (f"?{urlencode(query, doseq=True)}" if query else "")
        try:
            conn.request(method, target, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(f"cannot reach the daemon at {self.url}: {_why(exc)}") from None
        finally:
            conn.close()
        if resp.status >= 400:
            raise_problem(resp.status, raw)
        return _json_object(raw), {k.lower(): v for k, v in resp.getheaders()}

    def upload(
        self, path: Path, query: dict[str, Any], progress: Callable[[int, int], None] | None = None
    ) -> dict[str, Any]:
        import http.client

        try:
            f = path.open("rb")
        except OSError as exc:
            raise InputUnreadable(f"cannot read {path}: {exc.strerror or exc}") from None
        conn = self._conn()
        try:
            with f:
                size = os.fstat(f.fileno()).st_size
                conn.putrequest("POST", "/v1/artifacts?" + urlencode(query, doseq=True))
                for k, v in self._headers(
                    {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
                ).items():
                    conn.putheader(k, v)
                conn.endheaders()
                sent = 0
                while chunk := f.read(CHUNK):
                    try:
                        conn.send(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        break  # the daemon refused early; read its answer below
                    sent += len(chunk)
                    if progress:
                        progress(sent, size)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(f"cannot reach the daemon at {self.url}: {_why(exc)}") from None
        finally:
            conn.close()
        if resp.status >= 400:
            raise_problem(resp.status, raw)
        return _json_object(raw)

    def download(self, digest: str, out: BinaryIO) -> Iterator[int]:
        """Stream content into ``out``; yields bytes written so far."""
        import http.client

        conn = self._conn()
        try:
            try:
                conn.request(
                    "GET", f"/v1/artifacts/{quote(digest)}/content", headers=self._headers()
                )
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                raise Unreachable(f"cannot reach the daemon at {self.url}: {_why(exc)}") from None
            if resp.status >= 400:
                raise_problem(resp.status, resp.read())
            total = 0
            while True:
                try:
                    chunk = resp.read(CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    raise errors.IntegrityError(
                        f"download of {digest} aborted: {_why(exc)}",
                        code="artifact.download_aborted",
                    ) from None
                if not chunk:
                    break
                out.write(chunk)
                total += len(chunk)
                yield total
        finally:
            conn.close()


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        out = json.loads(raw or b"{}")
    except ValueError:
        out = None
    if not isinstance(out, dict):
        raise errors.AssayError(
            "the daemon answered with something that is not a JSON object",
            code="cli.bad_response",
        )
    return out
