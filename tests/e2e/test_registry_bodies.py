"""Hostile JSON bodies on promote, revoke and delete, against the real daemon.

Each body is parsed by one strict parser (``assay.registry.bodies``): not UTF-8, nested
past the bound, a number too long to be a value, a duplicate key, NaN, a top level that
is not an object, an unknown key: each is a 400 with a stable code and leaves its record,
never a 500. A hypothesis search over random bytes backs the list.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SAMPLES, Deployment, init_deployment, upload

pytestmark = pytest.mark.e2e

ST = (SAMPLES / "sample.safetensors").read_bytes()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Deployment, str]]:
    dep = init_deployment(tmp_path_factory.mktemp("bodies"), max_bytes=1024 * 1024)
    dep.start()
    try:
        with dep.client() as c:
            r = upload(c, ST)
            assert r.status_code == 201, r.text
            yield dep, r.json()["artifact"]["digest"]
    finally:
        dep.stop()


ROUTES = [("POST", "promote"), ("POST", "revoke"), ("DELETE", "")]


def send(dep: Deployment, digest: str, method: str, action: str, body: bytes) -> httpx.Response:
    path = f"/v1/artifacts/{digest}" + (f"/{action}" if action else "")
    with dep.client() as c:
        return c.request(method, path, content=body, headers={"content-type": "application/json"})


ATTACKS = {
    "not utf-8": b'{"reason": "\xff\xfe"}',
    "utf-16": json.dumps({"reason": "x"}).encode("utf-16"),
    "bom": b'\xef\xbb\xbf{"reason": "x"}',
    "deeply nested": b'{"reason": ' + b"[" * 20000 + b"]" * 20000 + b"}",
    "nested past the bound": b'{"signatures": [[[[[[[[[[[[[[["x"]]]]]]]]]]]]]]]}',
    "huge integer": b'{"reason": ' + b"9" * 5000 + b"}",
    "huge float": b'{"reason": 1e999}',
    "nan": b'{"reason": NaN}',
    "duplicate key": b'{"reason": "a", "reason": "b"}',
    "lone surrogate": b'{"reason": "\\ud800"}',
    "array": b'["reason"]',
    "string": b'"reason"',
    "null": b"null",
    "unknown key": b'{"reasons": ["typo"]}',
    "truncated": b'{"reason": "x"',
    "whitespace only": b"   ",
}


@pytest.mark.parametrize("method,action", ROUTES, ids=["promote", "revoke", "delete"])
@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
def test_hostile_json_bodies_answer_400_with_a_stable_code_and_leave_a_record(
    live: tuple[Deployment, str], method: str, action: str, attack: str
) -> None:
    dep, digest = live
    r = send(dep, digest, method, action, ATTACKS[attack])
    assert r.status_code == 400, (r.status_code, r.text)
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["code"] in {"request.bad_json", "request.invalid"}, problem
    request_id = r.headers["x-request-id"]
    (record,) = [x for x in dep.audit_records() if x["request_id"] == request_id]
    assert record["status"] == 400 and record["error_code"] == problem["code"]
    assert record["decision"] == "deny"
    # The artifact did not move.
    with dep.client() as c:
        assert c.get(f"/v1/artifacts/{digest}").json()["artifact"]["state"] == "quarantined"


def test_a_reason_with_a_bidi_override_or_line_separator_is_refused(
    live: tuple[Deployment, str],
) -> None:
    dep, digest = live
    for reason in ("ok\u202etxt.exe", "line\u2028two", "nel\x85", "bell\x07"):
        r = send(dep, digest, "POST", "revoke", json.dumps({"reason": reason}).encode())
        assert r.status_code == 400 and r.json()["code"] == "request.invalid", r.text


def test_a_signature_key_id_must_be_an_id_not_text(live: tuple[Deployment, str]) -> None:
    dep, digest = live
    for key_id in ("acme\n", "ac me", "", "x" * 65):
        body = {"signatures": [{"key_id": key_id, "signature": "AAAA"}]}
        r = send(dep, digest, "POST", "promote", json.dumps(body).encode())
        assert r.status_code == 400, r.text


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
BODIES = st.one_of(
    st.binary(max_size=200),
    JSONISH.map(lambda v: json.dumps(v).encode()),
    st.dictionaries(st.sampled_from(["reason", "signatures", "x"]), JSONISH, max_size=3).map(
        lambda v: json.dumps(v).encode()
    ),
    st.tuples(st.integers(1, 3000), st.sampled_from([b"[", b'{"a":', b'[{"b":'])).map(
        lambda t: t[1] * t[0]
    ),
    st.text(max_size=50).map(lambda s: s.encode("utf-16")),
)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(body=BODIES, route=st.sampled_from(ROUTES))
def test_no_body_on_a_mutation_route_answers_5xx(
    live: tuple[Deployment, str], body: bytes, route: tuple[str, str]
) -> None:
    dep, digest = live
    method, action = route
    r = send(dep, digest, method, action, body)
    assert r.status_code < 500, (r.status_code, body[:80], r.text)
    if r.status_code >= 400:
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["code"]
