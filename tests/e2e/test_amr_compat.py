"""AMR compatibility routes on the real daemon, every answer checked against AMR's own
published schema (``tests/data/amr/openapi.yaml``), refusals included."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.numpy import save as st_save

from assay.registry import amr_shape
from tests import amr_schema
from tests.conftest import Deployment, init_deployment, upload

pytestmark = pytest.mark.e2e

#: The AMR operations that take ``?name=``, and how each is called.
NAMED = {
    ("GET", "/v1/model"),
    ("GET", "/v1/model/path"),
    ("POST", "/v1/model/verify"),
    ("POST", "/v1/model/verify-manifest"),
    ("POST", "/v1/model/quarantine"),
    ("POST", "/v1/model/revoke"),
    ("DELETE", "/v1/model/delete"),
}


def tensors(seed: int) -> bytes:
    return st_save({"w": np.full(16, seed, dtype=np.int32)})


def hex_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    d = init_deployment(tmp_path_factory.mktemp("amr"), max_bytes=1024 * 1024)
    d.create_token("reader", "artifacts:read")
    d.start()
    try:
        yield d
    finally:
        d.stop()


def call(c: httpx.Client, method: str, path: str, **kw: Any) -> httpx.Response:
    if method == "POST" and "json" not in kw and "content" not in kw:
        kw["content"] = b"{}"  # what securectl posts
    return c.request(method, path, **kw)


def checked(
    c: httpx.Client, method: str, path: str, status: int, **kw: Any
) -> httpx.Response:  # fmt: skip
    r = call(c, method, path, **kw)
    assert r.status_code == status, (method, path, r.status_code, r.text[:400])
    amr_schema.check(method, path, r)
    return r


def uploaded(c: httpx.Client, data: bytes, name: str) -> str:
    r = upload(c, data, name=name)
    assert r.status_code == 201, r.text
    return str(r.json()["artifact"]["digest"])


def promote_amr(c: httpx.Client, name: str, data: bytes, status: int = 201) -> httpx.Response:
    body = {"name": name, "filename": name.rsplit("/", 1)[-1] + ".safetensors",
            "sha256": hex_of(data), "size_bytes": len(data),
            "scan_results": {"modelscan": "pass"}, "scanner_versions": {"modelscan": "0.8"},
            "policy_version": "v1"}  # fmt: skip
    return checked(c, "POST", "/v1/model/promote", status, json=body)


def test_the_served_amr_routes_are_exactly_the_schema_operations(dep: Deployment) -> None:
    with dep.client() as c:
        spec = c.get("/openapi.json").json()
    served = {(m.upper(), p) for p, ops in spec["paths"].items() for m in ops}
    amr = {(m, p) for m, p in served if p in amr_shape.PATHS}
    assert amr == amr_schema.operations()
    assert {p for _m, p in amr} == amr_shape.PATHS


def test_pipeline_upload_acquire_quarantine_promote_path_answers_match_the_schema(
    dep: Deployment,
) -> None:
    data = tensors(1)
    name = "pipe/one"
    with dep.client() as c:
        digest = uploaded(c, data, name)
        acquire = {"name": name, "filename": "one.safetensors", "sha256": hex_of(data),
                   "size_bytes": len(data), "source": "hf"}  # fmt: skip
        r = checked(c, "POST", "/v1/model/acquire", 201, json=acquire)
        assert r.json()["state"] == "quarantined"
        r = checked(c, "POST", f"/v1/model/quarantine?name={name}", 200)
        assert r.json() == {"status": "already_quarantined", "name": name}
        r = checked(c, "GET", f"/v1/model?name={name}", 200)
        assert r.json()["sha256"] == hex_of(data) and r.json()["state"] == "quarantined"
        r = promote_amr(c, name, data)
        assert r.json()["state"] == "trusted" and r.json()["sha256"] == hex_of(data)
        r = checked(c, "GET", f"/v1/model/path?name={name}", 200)
        got = r.json()
        # The locator names the very bytes: bare-hex digest, size, content address.
        assert got["sha256"] == hex_of(data) and got["size_bytes"] == len(data)
        assert got["storage_contract"] == "content-addressed-v1"
        path = Path(got["path"])
        assert path.is_absolute() and path.name == hex_of(data)
        assert path.parent.parts[-2:] == ("objects", "sha256")
        assert hex_of(path.read_bytes()) == got["sha256"]
        r = checked(c, "POST", f"/v1/model/verify?name={name}", 200)
        assert r.json()["status"] == "verified" and r.json()["safe_to_use"] == "true"
        r = checked(c, "POST", f"/v1/model/verify-manifest?name={name}", 200)
        assert r.json()["status"] == "skipped"
        r = checked(c, "GET", "/v1/models", 200)
        assert any(m["sha256"] == hex_of(data) for m in r.json())
        r = checked(c, "POST", "/v1/models/verify-all", 200)
        assert r.json()["status"] == "ok" and r.json()["checked"] == len(r.json()["models"])
        r = checked(c, "GET", "/v1/integrity/status", 200)
        assert r.json()["status"] == "ok"
        r = checked(c, "GET", "/v1/stats", 200)
        assert r.json()["trusted_count"] >= 1
        assert r.json()["model_count"] == sum(r.json()["state_counts"].values())
        checked(c, "GET", "/v1/audit", 200)
        r = checked(c, "GET", "/health", 200)
        assert c.get(f"/v1/artifacts/{digest}").json()["artifact"]["state"] == "trusted"


def test_every_amr_route_refuses_a_missing_or_wrong_token_with_403_and_records_it(
    dep: Deployment,
) -> None:
    wrong = "assay_" + "W" * 43
    for method, path in sorted(amr_schema.operations()):
        if path == "/health":
            continue
        for token, code in ((None, "auth.missing_credential"), (wrong, "auth.invalid_credential")):
            before = len(dep.audit_records())
            with dep.client(token) as c:
                r = call(c, method, path + ("?name=x" if (method, path) in NAMED else ""))
            amr_schema.check(method, path, r, auth_failure=True)
            assert r.json()["code"] == code and r.json()["status"] == 403
            assert r.json()["error"], r.text  # AMR clients print ``error``
            assert "www-authenticate" not in r.headers
            records = dep.audit_records()
            assert len(records) == before + 1, (method, path)
            assert records[-1]["status"] == 403 and records[-1]["error_code"] == code
    # assay's own routes keep answering 401.
    with dep.client(None) as c:
        assert c.get("/v1/artifacts").status_code == 401


def test_unknown_model_is_404_on_every_named_route(dep: Deployment) -> None:
    with dep.client() as c:
        for method, path in sorted(NAMED):
            r = checked(c, method, f"{path}?name=no/such/model", 404)
            assert r.json()["code"] == "artifact.not_found"


def test_path_of_a_model_that_is_not_trusted_is_403(dep: Deployment) -> None:
    with dep.client() as c:
        uploaded(c, tensors(2), "gate/quarantined")
        checked(c, "GET", "/v1/model/path?name=gate/quarantined", 403)
        uploaded(c, tensors(3), "gate/revoked")
        promote_amr(c, "gate/revoked", tensors(3))
        checked(c, "POST", "/v1/model/revoke?name=gate/revoked", 200)
        r = checked(c, "GET", "/v1/model/path?name=gate/revoked", 403)
        assert r.json()["code"] == "artifact.not_trusted"
        checked(c, "DELETE", "/v1/model/delete?name=gate/revoked", 200)
        checked(c, "GET", "/v1/model/path?name=gate/revoked", 403)


def test_path_of_tampered_bytes_is_409_recorded_and_stays_blocked(dep: Deployment) -> None:
    data = tensors(4)
    name = "tamper/path"
    with dep.client() as c:
        digest = uploaded(c, data, name)
        promote_amr(c, name, data)
        obj = dep.dir / "state" / "store" / "objects" / "sha256" / hex_of(data)
        flipped = bytearray(data)
        flipped[-1] ^= 0xFF
        os.chmod(obj, 0o600)
        obj.write_bytes(bytes(flipped))
        os.chmod(obj, 0o444)  # as the store keeps it: only the bytes differ
        r = checked(c, "GET", f"/v1/model/path?name={name}", 409)
        assert r.json()["code"] == "artifact.integrity_failed"
        rec = dep.audit_records()[-1]
        assert rec["action"] == "artifact.integrity_failed" and rec["target"] == digest
        assert rec["status"] == 409 and rec["error_code"] == "artifact.integrity_failed"
        # Blocked: the same bytes are not handed out again, through either API.
        checked(c, "GET", f"/v1/model/path?name={name}", 409)
        assert c.get(f"/v1/artifacts/{digest}/content").status_code == 409
        r = checked(c, "POST", f"/v1/model/verify?name={name}", 409)
        body = r.json()
        assert body["status"] == "failed" and body["safe_to_use"] == "false"
        assert body["expected"] == hex_of(data) and body["actual"] == hex_of(bytes(flipped))
        r = checked(c, "POST", "/v1/models/verify-all", 409)
        line = next(m for m in r.json()["models"] if m.get("sha256") == hex_of(data))
        assert line["status"] == "failed"
        assert checked(c, "GET", "/v1/integrity/status", 200).json()["status"] == "failed"
        # Restoring the bytes and verifying lifts the block, as on assay's own routes.
        obj.write_bytes(data)
        os.chmod(obj, 0o444)
        checked(c, "POST", f"/v1/model/verify?name={name}", 200)
        checked(c, "GET", f"/v1/model/path?name={name}", 200)


def test_path_never_names_a_symlink_even_to_the_right_bytes(dep: Deployment) -> None:
    data = tensors(13)
    name = "tamper/symlink"
    with dep.client() as c:
        uploaded(c, data, name)
        promote_amr(c, name, data)
        obj = dep.dir / "state" / "store" / "objects" / "sha256" / hex_of(data)
        elsewhere = dep.dir / "planted"
        elsewhere.write_bytes(data)  # the right bytes, but not the store's own file
        obj.unlink()
        obj.symlink_to(elsewhere)
        r = checked(c, "GET", f"/v1/model/path?name={name}", 409)
        assert "symlink" in r.json()["detail"]
        obj.unlink()
        obj.write_bytes(data)
        os.chmod(obj, 0o444)
        checked(c, "POST", f"/v1/model/verify?name={name}", 200)
        assert checked(c, "GET", f"/v1/model/path?name={name}", 200).json()["path"] == str(obj)


def test_a_revoked_name_never_falls_back_to_an_older_trusted_version(dep: Deployment) -> None:
    old, new = tensors(5), tensors(6)
    name = "versions/model"
    with dep.client() as c:
        uploaded(c, old, name)
        promote_amr(c, name, old)
        uploaded(c, new, name)
        promote_amr(c, name, new)
        r = checked(c, "GET", f"/v1/model/path?name={name}", 200)
        assert r.json()["sha256"] == hex_of(new)  # the newest trusted version
        uploaded(c, tensors(7), name)  # and a candidate still in quarantine
        r = checked(c, "POST", f"/v1/model/revoke?name={name}", 200)
        assert r.json() == {"status": "revoked", "name": name}
        checked(c, "GET", f"/v1/model/path?name={name}", 403)
        states = {a["state"] for a in c.get("/v1/artifacts", params={"name": name}).json()[
            "artifacts"]}  # fmt: skip
        assert states == {"revoked"}
        r = checked(c, "POST", f"/v1/model/revoke?name={name}", 200)
        assert r.json()["status"] == "already_revoked"
        r = checked(c, "DELETE", f"/v1/model/delete?name={name}", 200)
        assert r.json()["status"] == "deleted"
        r = checked(c, "DELETE", f"/v1/model/delete?name={name}", 200)
        assert r.json()["status"] == "already_deleted"


def test_acquire_refusals_point_at_upload_and_keep_amr_statuses(dep: Deployment) -> None:
    data = tensors(8)
    body = {"name": "acq/one", "filename": "one.safetensors", "sha256": hex_of(data),
            "size_bytes": len(data)}  # fmt: skip
    with dep.client() as c:
        r = checked(c, "POST", "/v1/model/acquire", 409, json=body)
        assert r.json()["code"] == "artifact.not_uploaded" and "/v1/artifacts" in r.json()["error"]
        rec = dep.audit_records()[-1]
        assert (rec["action"], rec["decision"], rec["status"]) == ("amr.acquire", "deny", 409)
        assert rec["target"] == "sha256:" + hex_of(data)
        checked(c, "POST", "/v1/model/acquire", 403, json=body | {"filename": "one.pt"})
        checked(c, "POST", "/v1/model/acquire", 400, json=body | {"filename": "../one.gguf"})
        checked(c, "POST", "/v1/model/acquire", 400, json=body | {"sha256": "AB" * 32})
        checked(c, "POST", "/v1/model/acquire", 400, json=body | {"extra": 1})
        uploaded(c, data, "acq/one")
        checked(c, "POST", "/v1/model/acquire", 201, json=body)
        r = checked(c, "POST", "/v1/model/acquire", 409, json=body | {"name": "acq/other"})
        assert r.json()["code"] == "artifact.mismatch"
        checked(c, "POST", "/v1/model/acquire", 409, json=body | {"size_bytes": 1})
        checked(c, "POST", "/v1/model/acquire", 409, json=body | {"filename": "one.gguf"})


def test_promote_with_failed_scanner_evidence_is_422_and_stays_quarantined(
    dep: Deployment,
) -> None:
    data = tensors(9)
    name = "scan/failed"
    body = {
        "name": name,
        "filename": "failed.safetensors",
        "sha256": hex_of(data),
        "scan_results": {"modelscan": "fail"},
        "scanner_versions": {"modelscan": "0.8"},
    }
    with dep.client() as c:
        digest = uploaded(c, data, name)
        r = checked(c, "POST", "/v1/model/promote", 422, json=body)
        assert r.json()["code"] == "artifact.policy_refused"
        no_version = body | {"scan_results": {"modelscan": "pass"}, "scanner_versions": {}}
        checked(c, "POST", "/v1/model/promote", 422, json=no_version)
        checked(c, "POST", "/v1/model/promote", 409, json=body | {
            "name": "scan/other", "scan_results": {}})  # fmt: skip
        assert c.get(f"/v1/artifacts/{digest}").json()["artifact"]["state"] == "quarantined"
        promote_amr(c, name, data)
        promote_amr(c, name, data, status=409)  # trusted already: no longer quarantined


def test_audit_events_are_the_chain_records_paged_without_loss(dep: Deployment) -> None:
    with dep.client() as c:
        data = tensors(10)
        c.headers["X-Request-Id"] = "rid-secretive"  # carried by the lifecycle records
        uploaded(c, data, "audit/one")
        promote_amr(c, "audit/one", data)
        del c.headers["X-Request-Id"]
        whole = checked(c, "GET", "/v1/audit", 200)
        events = whole.json()
        # Nothing but AMR's event fields: no principal, request id or reason leaves.
        assert "admin" not in whole.text and "rid-" not in whole.text
        assert "reasons" not in whole.text and dep.admin_token not in whole.text
        assert "link" not in whole.headers
        paged: list[dict[str, Any]] = []
        after = 0
        for _page in range(len(events) + 2):
            r = checked(c, "GET", f"/v1/audit?limit=1&after={after}", 200)
            paged += r.json()
            if "x-next-cursor" not in r.headers:
                break
            assert r.headers["link"].endswith('rel="next"')
            after = int(r.headers["x-next-cursor"])
        assert paged == events
    records = {r["seq"]: r for r in dep.audit_records()}
    moves = [r for r in records.values() if amr_shape.is_lifecycle(r)]
    assert [e["sequence"] for e in events] == sorted(r["seq"] for r in moves)
    for e in events:
        rec = records[e["sequence"]]
        assert (e["hash"], e["prev_hash"], e["timestamp"]) == (
            rec["record_hash"], rec["prev_hash"], rec["ts"])  # fmt: skip
        assert e["sha256"] == rec["target"].removeprefix("sha256:")
        assert e["to_state"] == rec["to_state"] and e["artifact"]["state"] == e["to_state"]
    assert {"quarantine", "promote"} <= {e["action"] for e in events}


def test_audit_needs_audit_read_and_reads_need_a_read_scope(dep: Deployment) -> None:
    with dep.client("reader") as c:
        for _ in range(50):  # the daemon loads a token created before start; bounded anyway
            r = c.get("/v1/audit")
            if r.status_code == 403:
                break
        assert r.json()["code"] == "auth.scope_denied"
        amr_schema.check("GET", "/v1/audit", r, auth_failure=True)
        assert c.get("/v1/models").status_code == 200
        r = call(c, "POST", "/v1/model/revoke?name=x")
        assert r.status_code == 403 and r.json()["code"] == "auth.scope_denied"


def test_bad_query_and_body_are_400_not_500(dep: Deployment) -> None:
    with dep.client() as c:
        for path in ("/v1/model", "/v1/model?name=", "/v1/model?name=a&name=b",
                     "/v1/model?name=%20a", "/v1/model?name=a%00b", "/v1/model?name=a&x=1",
                     "/v1/models?limit=0", "/v1/models?limit=abc", "/v1/audit?after=-1",
                     "/v1/models?cursor=sha256:" + "0" * 64):  # fmt: skip
            r = c.get(path)
            assert r.status_code == 400, (path, r.text)
            assert r.headers["content-type"] == "application/problem+json"
        for raw in (b"[]", b"{", b'{"a":1}', b"\xff"):
            r = c.post("/v1/model/verify?name=x", content=raw)
            assert r.status_code == 400, (raw, r.text)


def test_promote_refused_by_assay_policy_is_amr_422(dep: Deployment) -> None:
    data = tensors(11)
    with dep.client() as c:
        r = upload(c, data, name="policy/nolicense", meta=("source=test",))
        assert r.status_code == 201, r.text
        r = promote_amr(c, "policy/nolicense", data, status=422)
        assert r.json()["code"] == "artifact.policy_refused"
        assert any("license" in reason for reason in r.json()["reasons"])


@pytest.fixture
def two_person(tmp_path: Path) -> Iterator[Deployment]:
    d = init_deployment(tmp_path, max_bytes=1024 * 1024)
    d.edit_config("  policy: default\n", "  policy: two-person\n")
    for who in ("alice", "bob"):
        d.create_token(who, "artifacts:promote", "artifacts:read")
    d.start()
    try:
        yield d
    finally:
        d.stop()


def test_an_approval_that_does_not_yet_promote_is_202_never_201(two_person: Deployment) -> None:
    """AMR has no multi-party approval, so its schema has no answer for a recorded approval
    that leaves the artifact quarantined: assay answers its own 202 there (documented),
    and only 201 ever means trusted."""
    data = tensors(12)
    name = "two/person"
    assert "202" not in amr_schema.document()["paths"]["/v1/model/promote"]["post"]["responses"]
    with two_person.client() as c:
        uploaded(c, data, name)
    body = {"name": name, "filename": "person.safetensors", "sha256": hex_of(data)}
    with two_person.client("alice") as c:
        r = c.post("/v1/model/promote", json=body)
        assert r.status_code == 202, r.text
        assert r.json()["state"] == "quarantined"
        assert amr_schema.errors(r.json(), "#/components/schemas/Artifact") == []
        assert two_person.audit_records()[-1]["status"] == 202
        checked(c, "GET", f"/v1/model/path?name={name}", 403)
    with two_person.client("bob") as c:
        r = checked(c, "POST", "/v1/model/promote", 201, json=body)
        assert r.json()["state"] == "trusted"
        assert two_person.audit_records()[-1]["status"] == 201
        checked(c, "GET", f"/v1/model/path?name={name}", 200)
