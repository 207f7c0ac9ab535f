"""The real daemon over real HTTP: lifecycle, refusals and attacks."""

from __future__ import annotations

import hashlib
import pickle
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import SAMPLES, Deployment, init_deployment, upload

pytestmark = pytest.mark.e2e

ST = (SAMPLES / "sample.safetensors").read_bytes()
GG = (SAMPLES / "sample.gguf").read_bytes()


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_full_lifecycle_quarantine_promote_fetch_revoke(deployment: Deployment) -> None:
    with deployment.client() as c:
        r = upload(c, ST, digest=digest_of(ST))
        assert r.status_code == 201, r.text
        art = r.json()["artifact"]
        assert art["state"] == "quarantined" and art["format"] == "safetensors"
        d = art["digest"]
        assert c.get(f"/v1/artifacts/{d}/content").status_code == 403  # not trusted yet
        r = c.post(f"/v1/artifacts/{d}/promote")
        assert r.status_code == 200, r.text
        assert r.json()["artifact"]["state"] == "trusted"
        assert "assay-receipt" in r.headers
        r = c.get(f"/v1/artifacts/{d}/content")
        assert r.status_code == 200 and r.content == ST
        assert c.get("/v1/trusted/m/one").json()["digest"] == d
        r = c.post(f"/v1/artifacts/{d}/revoke", json={"reason": "compromised"})
        assert r.status_code == 200 and r.json()["artifact"]["state"] == "revoked"
        # Takes effect on the very next request.
        assert c.get(f"/v1/artifacts/{d}/content").status_code == 403
        assert c.get("/v1/trusted/m/one").status_code == 404
        hist = c.get(f"/v1/artifacts/{d}").json()["history"]
        assert [h["action"] for h in hist] == ["ingest", "approve", "promote", "revoke"]


def test_gguf_sample_is_accepted_as_gguf(deployment: Deployment) -> None:
    with deployment.client() as c:
        r = upload(c, GG, name="m/gguf")
        assert r.status_code == 201, r.text
        assert r.json()["artifact"]["format"] == "gguf"


def test_pickle_renamed_to_safetensors_is_refused(deployment: Deployment) -> None:
    evil = pickle.dumps({"weights": [1, 2, 3]}, protocol=4)
    with deployment.client() as c:
        r = upload(c, evil, name="model.safetensors")
        assert r.status_code == 422
        body = r.json()
        assert body["code"] == "artifact.format_refused" and body["reason"] == "pickle"
        assert r.headers["content-type"].startswith("application/problem+json")
    assert deployment.objects() == []


def test_declared_digest_mismatch_keeps_nothing(deployment: Deployment) -> None:
    with deployment.client() as c:
        r = upload(c, ST, digest="sha256:" + "0" * 64)
        assert r.status_code == 422 and r.json()["code"] == "artifact.digest_mismatch"
        assert c.get("/v1/artifacts").json()["count"] == 0
    assert deployment.objects() == []
    assert list((deployment.dir / "state" / "store" / "tmp").iterdir()) == []


def test_oversized_body_is_refused_with_413(deployment: Deployment) -> None:
    big = b"\0" * (1024 * 1024 + 1)
    with deployment.client() as c:
        r = upload(c, big)
        assert r.status_code == 413 and r.json()["code"] == "request.too_large"
    assert deployment.objects() == []


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/../b", "/abs", "a\nb", "", "a//b", "."])
def test_path_traversal_in_names_is_refused(deployment: Deployment, name: str) -> None:
    with deployment.client() as c:
        r = upload(c, ST, name=name)
        assert r.status_code == 400, r.text
        assert r.json()["code"] == "request.bad_name"


@pytest.mark.parametrize("meta", ["../x=1", "k=v\x00", "K=upper", "noequals", "k=" + "v" * 2000])
def test_hostile_metadata_is_refused(deployment: Deployment, meta: str) -> None:
    with deployment.client() as c:
        r = upload(c, ST, meta=(meta,))
        assert r.status_code == 400 and r.json()["code"] == "request.bad_metadata"


def test_duplicate_upload_creates_no_duplicate(deployment: Deployment) -> None:
    with deployment.client() as c:
        first = upload(c, ST)
        second = upload(c, ST, name="other/name")
        assert first.status_code == 201 and second.status_code == 200
        assert second.json()["created"] is False
        assert c.get("/v1/artifacts").json()["count"] == 1


def test_revoked_digest_stays_revoked_after_reupload(deployment: Deployment) -> None:
    with deployment.client() as c:
        d = upload(c, ST).json()["artifact"]["digest"]
        c.post(f"/v1/artifacts/{d}/revoke", json={"reason": "bad"})
        r = upload(c, ST)
        assert r.status_code == 200 and r.json()["artifact"]["state"] == "revoked"
        assert c.post(f"/v1/artifacts/{d}/promote").status_code == 409


def test_deleted_artifact_keeps_metadata_loses_bytes_and_cannot_be_promoted(
    deployment: Deployment,
) -> None:
    with deployment.client() as c:
        d = upload(c, ST).json()["artifact"]["digest"]
        assert len(deployment.objects()) == 1
        r = c.request("DELETE", f"/v1/artifacts/{d}", json={"reason": "cleanup"})
        assert r.status_code == 200 and r.json()["artifact"]["state"] == "deleted"
        assert deployment.objects() == []
        shown = c.get(f"/v1/artifacts/{d}").json()
        assert shown["artifact"]["name"] == "m/one" and shown["history"]
        r = c.post(f"/v1/artifacts/{d}/promote")
        assert r.status_code == 409 and r.json()["code"] == "artifact.state_conflict"
        # Re-upload of a deleted digest neither resurrects it nor keeps the bytes.
        assert upload(c, ST).json()["artifact"]["state"] == "deleted"
        assert deployment.objects() == []


def test_illegal_transitions_give_409(deployment: Deployment) -> None:
    with deployment.client() as c:
        d = upload(c, ST).json()["artifact"]["digest"]
        assert c.post(f"/v1/artifacts/{d}/promote").status_code == 200
        r = c.post(f"/v1/artifacts/{d}/promote")
        assert r.status_code == 409 and r.json()["allowed_actions"] == ["delete", "revoke"]


def test_policy_refusal_lists_every_failed_rule(deployment: Deployment) -> None:
    with deployment.client() as c:
        d = upload(c, ST, meta=()).json()["artifact"]["digest"]
        r = c.post(f"/v1/artifacts/{d}/promote")
        assert r.status_code == 422 and r.json()["code"] == "artifact.policy_refused"
        assert any("required_metadata" in x for x in r.json()["reasons"])
        assert c.get(f"/v1/artifacts/{d}").json()["artifact"]["state"] == "quarantined"
    denied = [
        x for x in deployment.audit_records() if x.get("error_code") == "artifact.policy_refused"
    ]
    assert denied and denied[-1]["decision"] == "deny" and denied[-1]["reasons"]


def test_bytes_tampered_on_disk_after_promotion_are_never_served(deployment: Deployment) -> None:
    with deployment.client() as c:
        d = upload(c, ST).json()["artifact"]["digest"]
        c.post(f"/v1/artifacts/{d}/promote")
        obj = deployment.objects()[0]
        tampered = bytearray(obj.read_bytes())
        tampered[-1] ^= 0xFF
        obj.write_bytes(bytes(tampered))
        # The stream is aborted before its last chunk: the client never gets it whole.
        with pytest.raises(httpx.RemoteProtocolError):
            c.get(f"/v1/artifacts/{d}/content")
        after = c.get(f"/v1/artifacts/{d}")
        assert after.json()["artifact"]["integrity"] == "failed"
        r = c.get(f"/v1/artifacts/{d}/content")
        assert r.status_code == 409 and r.json()["code"] == "artifact.integrity_failed"
        v = c.post(f"/v1/artifacts/{d}/verify").json()
        assert v["ok"] is False
    assert any(x["action"] == "artifact.integrity_failed" for x in deployment.audit_records())


def test_sweep_reports_tampering(deployment: Deployment) -> None:
    with deployment.client() as c:
        d = upload(c, GG, name="g").json()["artifact"]["digest"]
        c.post(f"/v1/artifacts/{d}/promote")
        deployment.objects()[0].write_bytes(b"GGUF" + b"\0" * 100)
        out = c.post("/v1/sweep").json()
        assert out["failed"] == [d]
        assert c.get(f"/v1/artifacts/{d}/content").status_code == 409


def test_security_headers_on_every_response(deployment: Deployment) -> None:
    with deployment.client() as c:
        for r in (c.get("/healthz"), c.get("/v1/artifacts"), c.get("/nope"), upload(c, b"")):
            assert r.headers["cache-control"] == "no-store"
            assert r.headers["x-content-type-options"] == "nosniff"


def test_unknown_route_is_a_problem_document(deployment: Deployment) -> None:
    with deployment.client() as c:
        r = c.get("/v1/does-not-exist")
        assert r.status_code == 404 and r.json()["code"] == "request.not_found"


def test_oversized_headers_are_refused(deployment: Deployment) -> None:
    with deployment.client() as c:
        try:
            r = c.get("/healthz", headers={"X-Big": "a" * 70_000})
        except httpx.TransportError:
            return  # connection refused mid-headers: also a refusal
        assert r.status_code == 431 and r.json()["code"] == "request.headers_too_large"


def test_new_token_works_without_restart_and_revoked_stops(deployment: Deployment) -> None:
    raw = deployment.create_token("reader", "artifacts:read")
    for _ in range(50):  # the daemon polls the token file about once a second
        if deployment.client(raw).get("/v1/artifacts").status_code == 200:
            break
        time.sleep(0.1)
    assert deployment.client(raw).get("/v1/artifacts").status_code == 200
    from tests.conftest import run_cli

    run_cli("token", "revoke", "--config", str(deployment.config), "--id", "reader", check=True)
    for _ in range(50):
        if deployment.client(raw).get("/v1/artifacts").status_code == 401:
            break
        time.sleep(0.1)
    assert deployment.client(raw).get("/v1/artifacts").status_code == 401


def records_of(dep: Deployment, request_id: str) -> list[dict[str, object]]:
    return [r for r in dep.audit_records() if r.get("request_id") == request_id]


def test_verify_finding_corruption_writes_one_record_with_a_receipt(
    deployment: Deployment,
) -> None:
    with deployment.client() as c:
        d = upload(c, ST).json()["artifact"]["digest"]
        obj = deployment.objects()[0]
        obj.write_bytes(obj.read_bytes()[:-1] + b"\xff")
        r = c.post(f"/v1/artifacts/{d}/verify", headers={"X-Request-Id": "verify-corrupt-1"})
        assert r.status_code == 200 and r.json()["ok"] is False
        assert r.headers["assay-receipt"] == r.json()["receipt"]
        (rec,) = records_of(deployment, "verify-corrupt-1")  # exactly one for the request
        assert rec["action"] == "artifact.integrity_failed" and rec["status"] == 200
        assert c.get(f"/v1/artifacts/{d}").json()["artifact"]["integrity"] == "failed"
        # Bytes put back: a verify restores integrity, and that change is recorded too.
        obj.write_bytes(ST)
        r = c.post(f"/v1/artifacts/{d}/verify", headers={"X-Request-Id": "verify-restored-1"})
        assert r.json()["ok"] is True
        (rec,) = records_of(deployment, "verify-restored-1")
        assert rec["action"] == "artifact.integrity_restored"
        history = c.get(f"/v1/artifacts/{d}").json()["history"]
        assert [h["action"] for h in history][-2:] == ["integrity.failed", "integrity.ok"]
        assert all(h["audit_seq"] is not None for h in history)


def test_promote_of_corrupt_bytes_is_refused_with_one_record(deployment: Deployment) -> None:
    with deployment.client() as c:
        d = upload(c, ST).json()["artifact"]["digest"]
        obj = deployment.objects()[0]
        obj.write_bytes(obj.read_bytes()[:-1] + b"\xff")
        r = c.post(f"/v1/artifacts/{d}/promote", headers={"X-Request-Id": "promote-corrupt-1"})
        assert r.status_code == 409 and r.json()["code"] == "artifact.integrity_failed"
        (rec,) = records_of(deployment, "promote-corrupt-1")
        assert rec["action"] == "artifact.integrity_failed"
        assert (rec["status"], rec["error_code"]) == (409, "artifact.integrity_failed")
        assert c.get(f"/v1/artifacts/{d}").json()["artifact"]["state"] == "quarantined"


def test_the_same_bytes_uploaded_concurrently_make_one_artifact(deployment: Deployment) -> None:
    import threading

    from tests.formats_factory import entry, st_file

    for round_no in range(5):
        data = st_file({"w": entry("U8", [64], 0, 64)}, bytes([round_no]) * 64)
        barrier = threading.Barrier(3, timeout=30)
        results: list[httpx.Response] = []

        def send(
            data: bytes = data,
            barrier: threading.Barrier = barrier,
            results: list[httpx.Response] = results,
            name: str = f"race/{round_no}",
        ) -> None:
            with deployment.client() as c:
                barrier.wait()
                results.append(upload(c, data, name=name))

        threads = [threading.Thread(target=send) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert sorted(r.status_code for r in results) == [200, 200, 201], [r.text for r in results]
        assert [r.json()["created"] for r in results].count(True) == 1
    with deployment.client() as c:
        listed = c.get("/v1/artifacts").json()
    assert listed["count"] == 5
    ingests = [r for r in deployment.audit_records() if r["action"] == "artifact.ingest"]
    assert sum(1 for r in ingests if r["status"] == 201) == 5


def test_trusted_bytes_deleted_from_the_store_are_an_integrity_failure_not_a_500(
    deployment: Deployment,
) -> None:
    with deployment.client() as c:
        d = upload(c, ST, name="m/vanishing").json()["artifact"]["digest"]
        assert c.post(f"/v1/artifacts/{d}/promote").status_code == 200
        deployment.objects()[0].unlink()
        r = c.get(f"/v1/artifacts/{d}/content", headers={"X-Request-Id": "fetch-missing-1"})
        assert r.status_code == 409 and r.json()["code"] == "artifact.integrity_failed"
        (rec,) = records_of(deployment, "fetch-missing-1")
        assert rec["action"] == "artifact.integrity_failed"
        assert rec["reasons"] == ["stored bytes are missing"]
        assert c.get(f"/v1/artifacts/{d}").json()["artifact"]["integrity"] == "failed"
        assert c.get("/v1/trusted/m/vanishing").status_code == 404


def test_deleting_a_trusted_artifact_stops_serving_on_the_very_next_request(
    deployment: Deployment,
) -> None:
    with deployment.client() as c:
        d = upload(c, ST, name="m/served").json()["artifact"]["digest"]
        assert c.post(f"/v1/artifacts/{d}/promote").status_code == 200
        assert c.get(f"/v1/artifacts/{d}/content").content == ST
        assert c.get("/v1/trusted/m/served").json()["digest"] == d
        assert c.request("DELETE", f"/v1/artifacts/{d}", json={"reason": "x"}).status_code == 200
        r = c.get(f"/v1/artifacts/{d}/content")
        assert r.status_code == 403 and r.json()["code"] == "artifact.not_trusted"
        assert c.get("/v1/trusted/m/served").status_code == 404


def test_the_periodic_sweep_finds_tampering_without_being_asked(tmp_path: Path) -> None:
    dep = init_deployment(tmp_path, max_bytes=1024 * 1024)
    dep.edit_config("  sweep_interval_seconds: 3600\n", "  sweep_interval_seconds: 0.5\n")
    dep.start()
    try:
        with dep.client() as c:
            d = upload(c, ST).json()["artifact"]["digest"]
            assert c.post(f"/v1/artifacts/{d}/promote").status_code == 200
            obj = dep.objects()[0]
            obj.write_bytes(obj.read_bytes()[:-1] + b"\xff")
            for _ in range(100):  # bounded: the sweep runs every half second
                if c.get(f"/v1/artifacts/{d}").json()["artifact"]["integrity"] == "failed":
                    break
                time.sleep(0.1)
            assert c.get(f"/v1/artifacts/{d}").json()["artifact"]["integrity"] == "failed"
            assert c.get(f"/v1/artifacts/{d}/content").status_code == 409
            status = c.get("/v1/status").json()
            assert status["last_sweep"]["failed"] == [d]
        failures = [r for r in dep.audit_records() if r["action"] == "artifact.integrity_failed"]
        assert len(failures) == 1 and failures[0]["request_id"] is None  # the daemon's own
    finally:
        dep.stop()


def test_readiness_names_store_database_audit_config_and_policy(deployment: Deployment) -> None:
    def ready(c: httpx.Client, want: int) -> dict[str, dict[str, object]]:
        for _ in range(100):  # the probe runs every 2 s: bounded wait for it
            r = c.get("/readyz")
            if r.status_code == want:
                break
            time.sleep(0.1)
        assert r.status_code == want, r.text
        checks: dict[str, dict[str, object]] = r.json()["checks"]
        return checks

    with deployment.client() as c:  # the details need artifacts:read
        checks = ready(c, 200)
        assert set(checks) == {"store", "database", "audit", "config", "policy", "trust", "posture"}
        assert checks["policy"]["name"] == "default"
        original = deployment.config.read_text()
        deployment.config.write_text(original + "registry_typo: 1\n")
        try:
            broken = ready(c, 503)  # a restart would fail: not ready
            assert broken["config"]["ok"] is False and "registry_typo" in str(broken["config"])
        finally:
            deployment.config.write_text(original)
        assert ready(c, 200)["config"]["ok"] is True
