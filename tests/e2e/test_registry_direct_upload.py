"""The direct upload transport, attacked over raw sockets against the real daemon.

The direct path reads ``POST /v1/artifacts`` bodies straight off the socket; everything
it does not take must fall through to hypercorn untouched. These tests drive the bytes
by hand so each framing case is exactly what a hostile or unusual client would send.
"""

from __future__ import annotations

import email.utils
import hashlib
import http.client
import json
import signal
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import SAMPLES, Deployment, init_deployment, run_cli, upload

pytestmark = pytest.mark.e2e

ST = (SAMPLES / "sample.safetensors").read_bytes()
TIMEOUT = 15.0


def head(
    dep: Deployment, length: int | None, *, token: str | None = None, extra: str = ""
) -> bytes:
    lines = [
        "POST /v1/artifacts?name=raw%2Fmodel&meta=source%3Dtest HTTP/1.1",
        f"Host: 127.0.0.1:{dep.port}",
        f"Authorization: Bearer {token or dep.admin_token}",
        "Content-Type: application/octet-stream",
    ]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


def connect(dep: Deployment) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", dep.port), timeout=TIMEOUT)
    return sock


def response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    resp = http.client.HTTPResponse(sock, method="POST")
    resp.begin()
    body = resp.read()
    return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body


def records(dep: Deployment, action: str | None = None) -> list[dict[str, object]]:
    out = [r for r in dep.audit_records() if r.get("route") == "POST /v1/artifacts"]
    return [r for r in out if action is None or r.get("action") == action]


def tmp_files(dep: Deployment) -> list[str]:
    return sorted(p.name for p in (dep.dir / "state" / "store" / "tmp").iterdir())


@pytest.fixture
def slow_stall_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    dep = init_deployment(tmp_path_factory.mktemp("stall"), max_bytes=1024 * 1024)
    dep.edit_config(
        "  sweep_interval_seconds: 3600\n",
        "  sweep_interval_seconds: 3600\n  upload_stall_timeout_seconds: 1\n",
    )
    dep.start()
    try:
        yield dep
    finally:
        dep.stop()


def test_plain_upload_takes_the_direct_path_and_closes_the_connection(
    deployment: Deployment,
) -> None:
    with connect(deployment) as sock:
        sock.sendall(head(deployment, len(ST)) + ST)
        status, headers, body = response(sock)
    assert status == 201, body
    assert headers["connection"] == "close"  # only the direct path closes after an upload
    digest = json.loads(body)["artifact"]["digest"]
    assert digest == "sha256:" + hashlib.sha256(ST).hexdigest()
    assert headers["assay-receipt"]  # the same adapter: receipts come along
    stored = deployment.dir / "state" / "store" / "objects" / "sha256" / digest[7:]
    assert stored.read_bytes() == ST


def test_chunked_upload_falls_through_to_hypercorn(deployment: Deployment) -> None:
    def parts() -> Iterator[bytes]:
        for i in range(0, len(ST), 7):
            yield ST[i : i + 7]

    with deployment.client() as c:
        r = c.post("/v1/artifacts", params={"name": "raw/chunked"}, content=parts())
    assert r.status_code == 201, r.text
    assert "connection" not in r.headers  # kept alive: hypercorn served it
    assert r.json()["artifact"]["size"] == len(ST)


def test_head_split_across_segments_falls_through_and_is_served(deployment: Deployment) -> None:
    data = head(deployment, len(ST))
    with connect(deployment) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(data[:20])
        time.sleep(0.3)
        sock.sendall(data[20:] + ST)
        status, headers, body = response(sock)
    assert status == 201, body
    assert headers.get("connection") != "close"


def test_expect_100_continue_is_sent_only_once_the_body_is_wanted(deployment: Deployment) -> None:
    with connect(deployment) as sock:
        sock.sendall(head(deployment, len(ST), extra="Expect: 100-continue\r\n"))
        interim = sock.recv(64)
        assert interim.startswith(b"HTTP/1.1 100 ")
        sock.sendall(ST)
        status, _headers, body = response(sock)
    assert status == 201, body


def test_refused_token_gets_401_without_100_continue(deployment: Deployment) -> None:
    with connect(deployment) as sock:
        sock.sendall(head(deployment, len(ST), token="x" * 43, extra="Expect: 100-continue\r\n"))
        status, headers, body = response(sock)
    assert status == 401 and json.loads(body)["code"] == "auth.invalid_credential"
    assert headers["www-authenticate"].startswith("Bearer")
    assert records(deployment)[-1]["status"] == 401


def test_refused_upload_still_delivers_its_response_while_the_body_streams(
    deployment: Deployment,
) -> None:
    payload = b"\0" * (512 * 1024)
    with connect(deployment) as sock:
        sock.sendall(head(deployment, len(payload), token="y" * 43) + payload)
        status, _headers, _body = response(sock)
    assert status == 401  # read, not a connection reset: the daemon drained the body


def test_oversized_declared_length_is_refused_before_any_byte_is_read(
    deployment: Deployment,
) -> None:
    with connect(deployment) as sock:
        sock.sendall(head(deployment, 10 * 1024**3))
        status, _headers, body = response(sock)
    assert status == 413 and json.loads(body)["code"] == "request.too_large"
    assert tmp_files(deployment) == []


def test_client_vanishing_mid_body_is_audited_and_keeps_nothing(deployment: Deployment) -> None:
    with connect(deployment) as sock:
        sock.sendall(head(deployment, len(ST)) + ST[:100])
    for _ in range(100):  # the daemon sees EOF, audits, cleans up: bounded wait
        failed = [r for r in records(deployment) if r.get("error_code") == "request.incomplete"]
        if failed:
            break
        time.sleep(0.1)
    assert failed and failed[-1]["status"] == 400
    assert tmp_files(deployment) == []
    assert deployment.objects() == []


def test_stalled_body_is_refused_after_the_stall_timeout(
    slow_stall_deployment: Deployment,
) -> None:
    dep = slow_stall_deployment
    with connect(dep) as sock:
        sock.sendall(head(dep, len(ST)) + ST[:100])
        status, _headers, body = response(sock)  # no more bytes: the daemon gives up
    assert status == 400 and json.loads(body)["code"] == "request.incomplete"
    assert tmp_files(dep) == []


def test_oversized_headers_on_the_direct_path_get_the_audited_431(deployment: Deployment) -> None:
    with connect(deployment) as sock:
        sock.sendall(head(deployment, len(ST), extra=f"X-Big: {'a' * 20_000}\r\n") + ST)
        status, _headers, body = response(sock)
    assert status == 431 and json.loads(body)["code"] == "request.headers_too_large"
    assert records(deployment)[-1]["status"] == 431


def test_body_longer_than_content_length_is_not_read_past(deployment: Deployment) -> None:
    trailing = b"GET /v1/artifacts HTTP/1.1\r\nHost: x\r\n\r\n"
    with connect(deployment) as sock:
        sock.sendall(head(deployment, len(ST)) + ST + trailing)
        status, headers, body = response(sock)
    assert status == 201, body  # the artifact is exactly Content-Length bytes
    assert json.loads(body)["artifact"]["size"] == len(ST)
    assert headers["connection"] == "close"


def test_other_routes_on_the_same_port_are_untouched(deployment: Deployment) -> None:
    with deployment.client() as c:
        assert upload(c, ST).status_code == 201
        r = c.get("/v1/artifacts")
        assert r.status_code == 200 and r.json()["count"] == 1
        assert c.get("/healthz").status_code == 200
    with httpx.Client(base_url=deployment.url) as anon:
        assert anon.post("/v1/artifacts", params={"name": "a"}, content=ST).status_code == 401


@pytest.mark.parametrize("chunked", [False, True], ids=["direct", "hypercorn"])
def test_upload_in_flight_at_sigterm_finishes_and_is_recorded(
    deployment: Deployment, chunked: bool
) -> None:
    if chunked:
        first = head(deployment, None, extra="Transfer-Encoding: chunked\r\n")
        first += f"{100:x}\r\n".encode() + ST[:100] + b"\r\n"
        rest = f"{len(ST) - 100:x}\r\n".encode() + ST[100:] + b"\r\n0\r\n\r\n"
    else:
        first, rest = head(deployment, len(ST)) + ST[:100], ST[100:]
    assert deployment.proc is not None
    with connect(deployment) as sock:
        sock.sendall(first)
        time.sleep(0.5)  # the daemon is inside the upload, waiting for more body
        deployment.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # shutdown has begun; the request in flight must still finish
        sock.sendall(rest)
        status, _headers, body = response(sock)
    assert status == 201, body
    assert deployment.proc.wait(timeout=30) == 0
    created = [r for r in records(deployment, "artifact.ingest") if r["status"] == 201]
    assert len(created) == 1
    assert run_cli("audit", "verify", str(deployment.audit_dir), "--key-file",
                   str(deployment.dir / "secrets" / "audit-hmac.key")).returncode == 0  # fmt: skip


GG = (SAMPLES / "sample.gguf").read_bytes()


def smuggle_pair(dep: Deployment, eol: bytes, length: int) -> bytes:
    """An upload head with lines ending in ``eol``, ST as its body, then a pipelined
    upload of GG. A reader that misses where the head ends reads GG as the body."""
    first = eol.join(
        [
            b"POST /v1/artifacts?name=a%2Ffirst&meta=source%3Dt&meta=license%3Dmit HTTP/1.1",
            f"Host: 127.0.0.1:{dep.port}".encode(),
            f"Authorization: Bearer {dep.admin_token}".encode(),
            f"Content-Length: {length}".encode(),
        ]
    )
    second = (
        "POST /v1/artifacts?name=a%2Fsmuggled&meta=source%3Dt&meta=license%3Dmit HTTP/1.1\r\n"
        f"Host: x\r\nAuthorization: Bearer {dep.admin_token}\r\n"
        f"Content-Length: {len(GG)}\r\n\r\n"
    ).encode()
    return first + eol + eol + ST + second + GG


@pytest.mark.parametrize("eol", [b"\n", b"\r\n"], ids=["lf", "crlf"])
@pytest.mark.parametrize("length", [len(ST), len(GG)], ids=["exact", "covers-smuggled"])
def test_lf_only_head_cannot_smuggle_the_next_request(
    deployment: Deployment, eol: bytes, length: int
) -> None:
    with connect(deployment) as sock:
        sock.sendall(smuggle_pair(deployment, eol, length))
        status, _headers, body = response(sock)
    if length == len(ST):  # the body is exactly ST: stored as itself
        assert status == 201, body
        assert json.loads(body)["artifact"]["digest"] == "sha256:" + hashlib.sha256(ST).hexdigest()
        assert [p.name for p in deployment.objects()] == [hashlib.sha256(ST).hexdigest()]
    else:  # the body is ST plus the start of the next head: not a model file
        assert status == 422, body
        assert deployment.objects() == []
    # Either way the pipelined upload was neither read as the body nor served.
    assert not any(r.get("status") == 201 and "smuggled" in json.dumps(r)
                   for r in records(deployment))  # fmt: skip
    gg = hashlib.sha256(GG).hexdigest()
    assert gg not in [p.name for p in deployment.objects()]


def test_direct_path_answers_carry_a_date_header(deployment: Deployment) -> None:
    answers = []
    for token in (None, "z" * 43):  # a 201 and an early 401
        with connect(deployment) as sock:
            sock.sendall(head(deployment, len(ST), token=token) + ST)
            answers.append(response(sock))
    assert [status for status, _h, _b in answers] == [201, 401]
    for _status, headers, _body in answers:
        assert headers["connection"] == "close"  # the direct path answered both
        parsed = email.utils.parsedate_to_datetime(headers["date"])
        assert parsed.tzinfo is not None
