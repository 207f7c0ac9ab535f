"""An outside attacker tries to make a request that leaves no audit record.

Each test is one way in, against the real daemon on loopback: a request the record
schema would refuse if its fields were copied in unbounded (empty or huge parameter
names, too many parameters, a huge path, junk headers), and requests refused by the
HTTP parser itself before the app sees them. Every one must answer a 4xx problem and
leave exactly one record, and the log must still verify.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Deployment, init_deployment, run_cli, upload
from tests.e2e.test_audit_daemon_coverage import artifact
from tests.rawhttp import exchange, request

pytestmark = pytest.mark.e2e

TRUNCATED = "audit.truncated"


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = init_deployment(tmp_path_factory.mktemp("attacks"), max_bytes=1024 * 1024)
    d.start()
    try:
        yield d
    finally:
        d.stop()


def record_count(dep: Deployment) -> int:
    return sum(
        f.read_bytes().count(b"\n") for f in dep.audit_dir.glob("audit*.jsonl") if f.is_file()
    )


def last_record(dep: Deployment) -> dict[str, Any]:
    return dep.audit_records()[-1]


def one_new_record(dep: Deployment, before: int) -> dict[str, Any]:
    after = record_count(dep)
    assert after == before + 1, f"{after - before} records for one request"
    return last_record(dep)


def verify_log(dep: Deployment) -> None:
    key = dep.dir / "secrets" / "audit-hmac.key"
    out = run_cli("audit", "verify", str(dep.audit_dir), "--key-file", str(key), "--json")
    assert out.returncode == 0, out.stdout + out.stderr


def assert_problem(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text[:500]
    assert r.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = r.json()
    return body


# -- the findings, one test per bullet ---------------------------------------------------


def test_empty_query_name_still_leaves_a_record(dep: Deployment) -> None:
    before = record_count(dep)
    with dep.client(None) as c:
        r = c.get("/v1/artifacts?=")
    assert_problem(r, 401)
    rec = one_new_record(dep, before)
    assert rec["status"] == 401 and rec["error_code"] == "auth.missing_credential"
    assert rec["params"] == ["param:malformed"] and rec["extra"][TRUNCATED] == "params"
    verify_log(dep)


def test_more_than_64_query_parameters_still_leave_a_record(dep: Deployment) -> None:
    before = record_count(dep)
    with dep.client() as c:  # authenticated: the route refuses the unknown parameters
        r = c.get("/v1/artifacts?" + "&".join(f"p{i}=1" for i in range(1000)))
    assert_problem(r, 400)
    rec = one_new_record(dep, before)
    assert rec["principal"] == "admin" and rec["error_code"] == "request.invalid"
    assert len(rec["params"]) == 64
    assert rec["extra"][TRUNCATED] == "params" and rec["extra"]["audit.dropped.params"] == 936
    verify_log(dep)


def test_a_600_character_parameter_key_still_leaves_a_record(dep: Deployment) -> None:
    before = record_count(dep)
    with dep.client(None) as c:
        r = c.get("/v1/artifacts?" + "k" * 600 + "=1")
    assert_problem(r, 401)
    rec = one_new_record(dep, before)
    (param,) = rec["params"]
    assert param.endswith("…:eq") and len(param) <= 512
    assert rec["extra"][TRUNCATED] == "params"
    verify_log(dep)


def test_a_5000_character_unmatched_path_still_leaves_a_record(dep: Deployment) -> None:
    before = record_count(dep)
    with dep.client(None) as c:
        r = c.get("/" + "x" * 5000)
    assert_problem(r, 404)
    rec = one_new_record(dep, before)
    assert rec["route"].startswith("GET /xxx") and rec["route"].endswith("…")
    assert len(rec["route"]) == 4096 and rec["extra"][TRUNCATED] == "route"
    verify_log(dep)


def test_an_unknown_malformed_parameter_on_the_upload_route_still_leaves_a_record(
    dep: Deployment,
) -> None:
    before = record_count(dep)
    with dep.client() as c:
        r = c.post(
            "/v1/artifacts?name=m/evil&=1&" + "z" * 700 + "=2",
            content=artifact(7),
            headers={"Content-Type": "application/octet-stream"},
        )
    body = assert_problem(r, 400)
    assert "unknown query parameters" in body["detail"]
    rec = one_new_record(dep, before)
    assert rec["action"] == "artifact.ingest" and rec["status"] == 400
    assert "name:eq" in rec["params"] and "param:malformed" in rec["params"]
    assert rec["extra"][TRUNCATED] == "params"
    verify_log(dep)


# -- more fields an attacker controls ----------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/artifacts", "/v1/status", "/nowhere"])
def test_a_huge_purpose_header_still_leaves_a_record(dep: Deployment, path: str) -> None:
    before = record_count(dep)
    with dep.client() as c:
        r = c.post(path, headers={"X-Purpose": "p" * 6000, "X-Request-Id": "r" * 600})
    assert 400 <= r.status_code < 500, r.text[:300]
    rec = one_new_record(dep, before)
    assert rec["purpose"] is None or len(rec["purpose"]) <= 4096
    assert rec["request_id"] == r.headers["x-request-id"] and len(rec["request_id"]) <= 64
    verify_log(dep)


def test_a_method_name_of_4000_characters_still_leaves_a_record(dep: Deployment) -> None:
    before = record_count(dep)
    got = exchange(dep.port, request(b"X" * 4000, b"/" + b"y" * 3000, []))
    assert got is not None and got.status in (404, 405), got
    rec = one_new_record(dep, before)
    assert len(rec["route"]) <= 4096 and rec["extra"][TRUNCATED] == "route"
    verify_log(dep)


def test_uploading_with_an_oversized_query_string_still_leaves_a_record(dep: Deployment) -> None:
    before = record_count(dep)
    auth = (b"Authorization", b"Bearer " + dep.admin_token.encode())
    target = b"/v1/artifacts?name=m/" + b"n" * 70_000
    got = exchange(dep.port, request(b"POST", target, [auth], artifact(8)))
    assert got is not None and got.status == 400, got
    rec = one_new_record(dep, before)
    assert rec["principal"] == "admin" and rec["action"] == "artifact.ingest"


# -- refused by the HTTP parser, before the app ------------------------------------------


#: Raw request -> the status h11 hints (501: RFC 9112 says so for an unknown coding).
REFUSED_BY_THE_PARSER = {
    "garbage_request_line": (b"GARBAGE\r\n\r\n", 400),
    "nul_in_a_header": (request(b"GET", b"/healthz", [(b"X-A", b"a\x00b")]), 400),
    "missing_host": (request(b"GET", b"/healthz", [], host=False), 400),
    "bad_header_name": (request(b"GET", b"/healthz", [(b"Bad Name", b"v")]), 400),
    "two_content_lengths": (
        request(b"POST", b"/v1/sweep", [(b"Content-Length", b"1"), (b"Content-Length", b"2")]),
        400,
    ),
    "unsupported_transfer_encoding": (
        request(b"POST", b"/v1/sweep", [(b"Transfer-Encoding", b"gzip")]),
        501,
    ),
}


@pytest.mark.parametrize("name", sorted(REFUSED_BY_THE_PARSER))
def test_a_request_the_parser_refuses_still_leaves_a_record(dep: Deployment, name: str) -> None:
    before = record_count(dep)
    raw, status = REFUSED_BY_THE_PARSER[name]
    got = exchange(dep.port, raw)
    assert got is not None and got.status == status, got
    assert got.headers["content-type"] == "application/problem+json", got
    problem = got.json()
    assert problem["status"] == got.status and problem["code"].startswith("request.")
    rec = one_new_record(dep, before)
    assert rec["action"] == "http.refused" and rec["status"] == got.status
    assert rec["decision"] == "deny" and rec["auth_mode"] == "none"
    assert rec["request_id"] == got.headers["x-request-id"] == problem["request_id"]
    verify_log(dep)


@pytest.mark.parametrize("path", [b"/v1/sweep", b"/nowhere", b"/v1/artifacts?name=m/x"])
def test_a_body_the_parser_refuses_leaves_exactly_one_record(dep: Deployment, path: bytes) -> None:
    """The head reached the app before the bad chunk: the app's record is the one."""
    auth = (b"Authorization", b"Bearer " + dep.admin_token.encode())
    raw = request(b"POST", path, [auth, (b"Transfer-Encoding", b"chunked")]) + b"zz\r\nabc\r\n"
    before = record_count(dep)
    got = exchange(dep.port, raw)
    assert got is not None and got.status == 400, got
    assert got.headers["content-type"] == "application/problem+json"
    for _ in range(200):  # bounded: the app's handler finishes on its own
        if record_count(dep) > before:
            break
        time.sleep(0.05)
    # A refusal's own record would be there before the answer: the first is the app's.
    rec = one_new_record(dep, before)
    assert rec["action"] != "http.refused" and rec["route"].startswith("POST /")


def test_a_header_line_the_parser_refuses_is_not_copied_into_the_record(dep: Deployment) -> None:
    """h11's message quotes the bad line: a bearer token in it must not reach the log."""
    secret = "assay_" + "s" * 40
    before = record_count(dep)
    raw = request(b"GET", b"/v1/status", [(b"Authorization", f"Bearer {secret}\x00".encode())])
    got = exchange(dep.port, raw)
    assert got is not None and got.status == 400
    one_new_record(dep, before)
    assert secret not in (dep.audit_dir / "audit.jsonl").read_text()


def test_an_oversized_incomplete_head_still_leaves_a_record(dep: Deployment) -> None:
    before = record_count(dep)
    # Never finished: no blank line, over h11's bound on incomplete data (1 MiB here).
    raw = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Pad: " + b"p" * (1100 * 1024)
    got = exchange(dep.port, raw)
    assert got is not None and got.status == 431, got
    assert got.json()["code"] == "request.headers_too_large"
    rec = one_new_record(dep, before)
    assert rec["action"] == "http.refused" and rec["status"] == 431
    verify_log(dep)


# -- readiness says ready or not, and nothing more without a scope -----------------------


def test_unauthenticated_readiness_says_only_ready_and_what_fails(dep: Deployment) -> None:
    with dep.client(None) as c:
        r = c.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"ready": True, "failing": []}
    assert str(dep.config) not in r.text


def test_watching_readiness_does_not_reveal_activity(dep: Deployment) -> None:
    with dep.client(None) as c:
        first = c.get("/readyz").text
        for _ in range(3):
            c.get("/v1/status")  # each leaves a record: the audit head moves
        assert c.get("/readyz").text == first


def test_readiness_details_need_the_read_scope(dep: Deployment) -> None:
    dep.create_token("prober", "artifacts:verify")
    with dep.client("prober") as c:
        for _ in range(100):  # bounded: the daemon reloads its token file every second
            if c.get("/v1/status").status_code == 403:  # known now, lacking the scope
                break
            time.sleep(0.05)
        assert c.get("/v1/status").status_code == 403
    with dep.client() as c:
        full = c.get("/readyz").json()
    assert set(full["checks"]) == {
        "store",
        "database",
        "audit",
        "config",
        "policy",
        "trust",
        "posture",
    }
    assert full["checks"]["audit"]["seq"] >= 1
    with dep.client("prober") as c:  # a token, but not the scope
        assert "checks" not in c.get("/readyz").json()
    with dep.client("not-a-token") as c:  # a bad credential is not an error on a probe
        shown = c.get("/readyz")
        assert shown.status_code == 200 and "checks" not in shown.json()


# -- hanging up ----------------------------------------------------------------------------


@pytest.mark.parametrize("route", [b"POST /v1/sweep", b"POST /v1/artifacts/{d}/verify"])
def test_a_client_that_hangs_up_right_after_asking_still_leaves_a_record(
    dep: Deployment, route: bytes
) -> None:
    """Quart cancels a handler when its client leaves; the record used to go with it."""
    with dep.client() as c:
        r = upload(c, artifact(500 + len(route)), name="m/hangup")
        assert r.status_code in (200, 201), r.text
        digest = r.json()["artifact"]["digest"]
    method, path = route.replace(b"{d}", digest.encode()).split(b" ")
    auth = (b"Authorization", b"Bearer " + dep.admin_token.encode())
    before = record_count(dep)
    for i in range(3):
        rid = (b"X-Request-Id", b"hangup-%d" % i)
        with socket.create_connection(("127.0.0.1", dep.port)) as sock:
            sock.sendall(request(method, path, [auth, rid]))  # and close at once, unread
    wanted = {f"hangup-{i}" for i in range(3)}
    for _ in range(200):  # bounded: the handlers finish on their own
        if record_count(dep) >= before + 3:
            break
        time.sleep(0.05)
    got = {r["request_id"] for r in dep.audit_records()[-3:]}
    assert got == wanted
    verify_log(dep)
