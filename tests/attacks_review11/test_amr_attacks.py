"""Attacks on the AMR compatibility routes of the real daemon (review 11).

Each test asserts the SAFE behaviour: it fails while the break it names exists.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save as st_save

from tests import amr_schema
from tests.conftest import Deployment, init_deployment, upload

pytestmark = pytest.mark.e2e


def tensors(seed: int) -> bytes:
    return st_save({"w": np.full(16, seed, dtype=np.int32)})


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = init_deployment(tmp_path_factory.mktemp("amr-attacks"), max_bytes=1024 * 1024)
    d.create_token("reader", "artifacts:read")
    d.create_token("writer", "artifacts:write")
    d.start()
    try:
        yield d
    finally:
        d.stop()


def trusted(dep: Deployment, data: bytes, name: str) -> str:
    with dep.client() as c:
        r = upload(c, data, name=name)
        assert r.status_code in (200, 201), r.text
        digest = str(r.json()["artifact"]["digest"])
        if r.json()["artifact"]["state"] != "trusted":
            assert c.post(f"/v1/artifacts/{digest}/promote", json={}).status_code == 200
    return digest


@pytest.mark.parametrize(
    "name",
    [
        "../../../etc/passwd",
        "/etc/passwd",
        "a/../../b",
        "..",
        "a/./b",
        "a%2F..%2F..%2Fb",
        "a\\..\\b",
        "a/b/",
        "A" * 5000,
        "a\u202eb",
        "\uff41/\uff42",  # fullwidth a/b
    ],
)
def test_attack_model_path_traversal_names_never_yield_a_path(dep: Deployment, name: str) -> None:
    trusted(dep, tensors(1), "a/b")
    with dep.client("reader") as c:
        r = c.get("/v1/model/path", params={"name": name})
    assert r.status_code in (400, 404), (r.status_code, r.text[:300])
    assert "path" not in r.text or "problem" in r.headers.get("content-type", "")
    if r.status_code == 404:  # a 400 for bad input is a documented difference
        amr_schema.check("GET", "/v1/model/path", r)


def test_attack_model_path_answers_only_a_store_object_and_matches_the_schema(
    dep: Deployment,
) -> None:
    data = tensors(2)
    digest = trusted(dep, data, "p/ok")
    with dep.client("reader") as c:
        r = c.get("/v1/model/path", params={"name": "p/ok"})
    assert r.status_code == 200, r.text
    amr_schema.check("GET", "/v1/model/path", r)
    body = r.json()
    store = (dep.dir / "state" / "store" / "objects").resolve()
    path = Path(body["path"]).resolve()
    assert path.is_relative_to(store) and path.name == digest[7:]
    assert body["sha256"] == hashlib.sha256(data).hexdigest() == digest[7:]
    assert body["size_bytes"] == len(data) == path.stat().st_size


@pytest.mark.parametrize(
    ("method", "route", "body"),
    [
        ("POST", "/v1/model/revoke", b"{}"),
        ("DELETE", "/v1/model/delete", b"{}"),
        ("POST", "/v1/model/verify", b"{}"),
    ],
)
def test_attack_read_or_write_token_cannot_change_trust_through_amr(
    dep: Deployment, method: str, route: str, body: bytes
) -> None:
    digest = trusted(dep, tensors(3), "s/guarded")
    for token in ("reader", "writer"):
        with dep.client(token) as c:
            r = c.request(method, route, params={"name": "s/guarded"}, content=body)
        assert r.status_code == 403, (token, route, r.status_code, r.text[:300])
    with dep.client() as c:
        assert c.get(f"/v1/artifacts/{digest}").json()["artifact"]["state"] == "trusted"


def test_attack_writer_cannot_promote_through_amr(dep: Deployment) -> None:
    data = tensors(4)
    with dep.client() as c:
        r = upload(c, data, name="s/waiting")
        assert r.status_code == 201, r.text
        digest = r.json()["artifact"]["digest"]
    body = {"name": "s/waiting", "filename": "waiting.safetensors",
            "sha256": digest[7:], "size_bytes": len(data),
            "scan_results": {"modelscan": "pass"}, "scanner_versions": {"modelscan": "0.8"},
            "policy_version": "v1"}  # fmt: skip
    with dep.client("writer") as c:
        r = c.post("/v1/model/promote", json=body)
    assert r.status_code == 403, r.text
    with dep.client() as c:
        assert c.get(f"/v1/artifacts/{digest}").json()["artifact"]["state"] == "quarantined"


def test_attack_quarantined_newer_upload_never_shadows_nor_leaks_via_model_path(
    dep: Deployment,
) -> None:
    """A writer uploads new, untrusted bytes under a trusted name: /v1/model/path must
    keep pointing at the trusted bytes, never the quarantined ones."""
    old = tensors(5)
    digest = trusted(dep, old, "s/shadow")
    with dep.client() as c:
        r = upload(c, tensors(6), name="s/shadow")
        assert r.status_code == 201, r.text
    with dep.client("reader") as c:
        r = c.get("/v1/model/path", params={"name": "s/shadow"})
    assert r.status_code == 200, r.text
    assert r.json()["sha256"] == digest[7:]
