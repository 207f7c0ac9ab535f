"""The JWKS fetcher against a hostile loopback server: it follows no redirect, reads no
more than its bound, takes no proxy from the environment, and turns every failure into
``auth.jwks_unavailable`` rather than an exception the edge would answer with a 500."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from assay.core.errors import JwksUnavailable
from assay.relay import oidc
from assay.relay.oidc import OidcVerifier, fetch_blocking
from assay.relay.oidc_config import OidcConfig


class Hostile(http.server.BaseHTTPRequestHandler):
    hits: ClassVar[dict[str, int]] = {}

    def log_message(self, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        Hostile.hits[self.path] = Hostile.hits.get(self.path, 0) + 1
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.end_headers()
        elif self.path == "/big":
            body = b'{"keys": [' + b" " * (oidc.MAX_DOCUMENT_BYTES + 10) + b"]}"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path == "/error":
            self.send_response(500)
            self.end_headers()
        elif self.path == "/garbage":
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<html>not json</html>")
        else:
            body = json.dumps({"keys": []}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)


@pytest.fixture
def server() -> Iterator[str]:
    Hostile.hits = {}
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=10)


def test_a_redirect_is_never_followed(server: str) -> None:
    with pytest.raises(OSError):
        fetch_blocking(f"{server}/redirect", 5)
    assert "/elsewhere" not in Hostile.hits


def test_a_document_over_the_bound_is_refused(server: str) -> None:
    with pytest.raises(ValueError, match="over"):
        fetch_blocking(f"{server}/big", 5)


def test_no_proxy_is_taken_from_the_environment(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")  # nothing listens on discard
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    assert json.loads(fetch_blocking(f"{server}/jwks", 5)) == {"keys": []}


@pytest.mark.parametrize("path", ["/redirect", "/big", "/error", "/garbage"])
async def test_every_fetch_failure_is_jwks_unavailable(server: str, path: str) -> None:
    policy = OidcConfig(issuer=server, audiences=["a"], jwks_url=f"{server}{path}",
                        allow_insecure_loopback_http=True)  # fmt: skip
    verifier = OidcVerifier(policy, f"{server}{path}")
    with pytest.raises(JwksUnavailable) as info:
        await verifier.authenticate({"authorization": "Bearer x.y.z"})
    assert info.value.status == 503 and info.value.code == "auth.jwks_unavailable"
