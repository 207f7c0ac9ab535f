"""A small HTTP client for the daemon (stdlib ``http.client``: streaming, no extra deps).

The daemon's RFC 9457 problems are turned back into the same typed errors the daemon
raised, by their stable ``code``, so ``main()`` maps them to exit codes in one place.
"""

from __future__ import annotations

import http.client
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode, urlsplit

from assay.core import errors, problem
from assay.formats import errors as _format_errors  # noqa: F401 - registers codes
from assay.registry import errors as _registry_errors  # noqa: F401 - registers codes

DEFAULT_URL = "http://127.0.0.1:8470"
URL_ENV = "ASSAY_URL"
TOKEN_ENV = "ASSAY_TOKEN"
TOKEN_FILE_ENV = "ASSAY_TOKEN_FILE"
CHUNK = 1024 * 1024


class Unreachable(Exception):
    """The daemon could not be reached at all."""


def raise_problem(status: int, body: bytes) -> None:
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        parsed = {"detail": body[:200].decode(errors="replace"), "code": "http.error"}
    raise problem.to_error(status, parsed)


@dataclass
class Client:
    url: str
    token: str | None
    timeout: float = 60.0

    @classmethod
    def from_args(cls, url: str | None, token_file: str | None) -> Client:
        base = url or os.environ.get(URL_ENV) or DEFAULT_URL
        token = os.environ.get(TOKEN_ENV)
        path = token_file or os.environ.get(TOKEN_FILE_ENV)
        if path:
            token = Path(path).read_text().strip()
        return cls(base.rstrip("/"), token)

    def _conn(self) -> http.client.HTTPConnection:
        parts = urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname:
            raise errors.BadRequest(f"unsupported daemon URL {self.url!r} (use http://host:port)")
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
        conn = self._conn()
        data = None if body is None else json.dumps(body).encode()
        headers = self._headers({"Content-Type": "application/json"} if data is not None else None)
        target = path + (f"?{urlencode(query, doseq=True)}" if query else "")
        try:
            conn.request(method, target, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(f"{self.url}: {exc}") from None
        finally:
            conn.close()
        if resp.status >= 400:
            raise_problem(resp.status, raw)
        return json.loads(raw or b"{}"), {k.lower(): v for k, v in resp.getheaders()}

    def upload(
        self, path: Path, query: dict[str, Any], progress: Callable[[int, int], None] | None = None
    ) -> dict[str, Any]:
        size = path.stat().st_size
        conn = self._conn()
        try:
            conn.putrequest("POST", "/v1/artifacts?" + urlencode(query, doseq=True))
            for k, v in self._headers(
                {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
            ).items():
                conn.putheader(k, v)
            conn.endheaders()
            sent = 0
            with path.open("rb") as f:
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
        except (TimeoutError, http.client.HTTPException, ConnectionRefusedError) as exc:
            raise Unreachable(f"{self.url}: {exc}") from None
        finally:
            conn.close()
        if resp.status >= 400:
            raise_problem(resp.status, raw)
        out: dict[str, Any] = json.loads(raw)
        return out

    def download(self, digest: str, out: BinaryIO) -> Iterator[int]:
        """Stream content into ``out``; yields bytes written so far."""
        conn = self._conn()
        try:
            conn.request("GET", f"/v1/artifacts/{quote(digest)}/content", headers=self._headers())
            resp = conn.getresponse()
            if resp.status >= 400:
                raise_problem(resp.status, resp.read())
            total = 0
            while chunk := resp.read(CHUNK):
                out.write(chunk)
                total += len(chunk)
                yield total
        except (OSError, http.client.HTTPException) as exc:
            raise errors.IntegrityError(
                f"download of {digest} aborted: {exc}", code="artifact.download_aborted"
            ) from None
        finally:
            conn.close()
