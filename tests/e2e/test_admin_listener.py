"""The registry's admin listener, against the real daemon: its own socket, its own gate.

Each test starts ``assay serve`` with an ``admin:`` section (a loopback port and a Unix
socket), scrapes ``/metrics`` with prometheus_client's text parser, and reads the audit
log the daemon wrote.
"""

from __future__ import annotations

import os
import random
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from assay.core.metrics import RouteNamer
from tests.conftest import Deployment, free_port, init_deployment, run_cli, upload
from tests.e2e.admin_support import label_values, scrape, value
from tests.e2e.deployments import ST
from tests.route_templates import registry_app

pytestmark = pytest.mark.e2e


def with_admin(dep: Deployment, section: str) -> None:
    dep.config.write_text(dep.config.read_text() + section)


@pytest.fixture
def admin_dep(tmp_path: Path) -> Iterator[tuple[Deployment, str, str]]:
    """A running registry with an admin listener; (deployment, admin URL, ops token)."""
    dep = init_deployment(tmp_path, max_bytes=1024 * 1024)
    port = free_port()
    with_admin(dep, f"admin:\n  bind: 127.0.0.1:{port}\n  unix_socket: state/admin.sock\n")
    ops = dep.create_token("ops", "admin:metrics")
    dep.create_token("auditor", "admin:posture")
    dep.start()
    try:
        yield dep, f"http://127.0.0.1:{port}", ops
    finally:
        dep.stop()


def test_request_counts_move_with_requests_by_route_template(
    admin_dep: tuple[Deployment, str, str],
) -> None:
    dep, admin_url, ops = admin_dep
    with httpx.Client(base_url=admin_url, timeout=30) as admin, dep.client() as public:
        r = upload(public, ST, name="m/one")
        assert r.status_code == 201, r.text
        digest = r.json()["artifact"]["digest"]
        before = scrape(admin, ops)
        for _ in range(3):
            assert public.get("/v1/artifacts").status_code == 200
        assert public.get(f"/v1/artifacts/{digest}").status_code == 200
        assert public.get("/v1/artifacts/sha256:" + "0" * 64).status_code == 404
        after = scrape(admin, ops)
    key = {"listener": "public", "method": "GET"}
    listed = value(after, "assay_http_requests_total", route="/v1/artifacts", status="200", **key)
    assert listed - value(before, "assay_http_requests_total", route="/v1/artifacts",
                          status="200", **key) == 3  # fmt: skip
    one = {"route": "/v1/artifacts/<digest>", **key}
    assert value(after, "assay_http_requests_total", status="200", **one) == 1
    assert value(after, "assay_http_requests_total", status="404", **one) == 1
    # The upload went through the raw upload adapter, not a Quart view: still its template.
    assert value(after, "assay_http_requests_total", listener="public", method="POST",
                 route="/v1/artifacts", status="201") == 1  # fmt: skip
    assert value(after, "assay_http_request_duration_seconds_count", route="/v1/artifacts",
                 **key) >= 3  # fmt: skip
    # The digest is in no label: only the template is.
    assert not any(digest in v for _n, ls, _v in after for v in ls.values())
    assert value(after, "assay_registry_artifacts", state="quarantined") == 1
    assert value(after, "assay_registry_sweep_running") == 0
    assert value(after, "assay_audit_head_seq") > 0
    assert value(after, "assay_audit_batch_write_seconds_count", outcome="ok") > 0
    assert value(after, "assay_audit_queue_depth") >= 0
    assert value(after, "assay_build_info", daemon="registry") == 1


def test_admin_routes_are_not_on_the_public_listener_nor_public_routes_on_admin(
    admin_dep: tuple[Deployment, str, str],
) -> None:
    dep, admin_url, ops = admin_dep
    auth = {"Authorization": f"Bearer {ops}"}
    with httpx.Client(base_url=admin_url, timeout=30) as admin, dep.client() as public:
        assert public.get("/metrics", headers=auth).status_code == 404
        for path in ("/v1/artifacts", "/healthz", "/readyz", "/openapi.json", "/v1/status"):
            r = admin.get(path, headers=auth)
            assert r.status_code == 404, path
            assert r.headers["content-type"] == "application/problem+json"
        assert admin.get("/metrics", headers=auth).status_code == 200


def test_metrics_needs_the_admin_scope_and_every_admin_request_is_recorded(
    admin_dep: tuple[Deployment, str, str],
) -> None:
    dep, admin_url, ops = admin_dep
    with httpx.Client(base_url=admin_url, timeout=30) as admin:
        assert admin.get("/metrics").status_code == 401
        # The deployment's admin token holds every artifacts scope but no admin:* one.
        wrong = {"Authorization": f"Bearer {dep.admin_token}"}
        assert admin.get("/metrics", headers=wrong).status_code == 403
        assert admin.get("/metrics", headers={"Authorization": "Bearer assay_nope"}).status_code \
            == 401  # fmt: skip
        assert admin.get("/nowhere/sha256:abc?id=P0001").status_code == 404
        scrape(admin, ops)
    dep.stop()
    records = [r for r in dep.audit_records() if r["route"] in ("GET /metrics", "GET unmatched")]
    assert [(r["status"], r["principal"]) for r in records] == [
        (401, None), (403, "admin"), (401, None), (404, None), (200, "ops"),
    ]  # fmt: skip
    assert records[-1]["action"] == "admin.metrics"
    assert all(r["extra"]["listener"] == "admin" for r in records)
    assert not any(r["extra"].get("listener") for r in dep.audit_records() if r["route"]
                   not in ("GET /metrics", "GET unmatched"))  # fmt: skip
    # The probed path and its query are kept nowhere in the record.
    assert not any("P0001" in str(r) or "nowhere" in str(r) for r in records)


def test_unix_socket_has_its_mode_before_use_and_serves_the_same_routes(
    admin_dep: tuple[Deployment, str, str],
) -> None:
    dep, _admin_url, ops = admin_dep
    sock = dep.dir / "state" / "admin.sock"
    info = os.lstat(sock)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    transport = httpx.HTTPTransport(uds=str(sock))
    with httpx.Client(transport=transport, base_url="http://admin", timeout=30) as admin:
        assert admin.get("/metrics").status_code == 401
        samples = scrape(admin, ops)
    assert value(samples, "assay_build_info", daemon="registry") == 1
    dep.stop()
    assert not sock.exists()  # removed by the daemon that made it


def test_random_paths_and_queries_never_become_label_values(
    admin_dep: tuple[Deployment, str, str], tmp_path: Path
) -> None:
    """An attacker's paths, methods and query strings on both listeners: every route label
    is a template the daemon declares, and none carries a byte of what was sent."""
    dep, admin_url, ops = admin_dep
    rng = random.Random(1313)
    markers: list[str] = []
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789-._~%:@"
    with httpx.Client(base_url=admin_url, timeout=30) as admin, dep.client() as public:
        for i in range(60):
            marker = f"m{rng.getrandbits(40):x}"
            markers.append(marker)
            tail = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 20)))
            path = rng.choice(["/v1/artifacts/", "/v1/trusted/", "/", "/metrics/", "/v1/"])
            method = rng.choice(["GET", "POST", "DELETE", "PUT", "PATCH", "BREW"])
            client = public if i % 2 else admin
            client.request(method, f"{path}{marker}{tail}", params={marker: marker})
        samples = scrape(admin, ops)
    routes = label_values(samples, "route")
    assert not any(m in v for m in markers for _n, ls, _v in samples for v in ls.values())
    declared = RouteNamer(registry_app(tmp_path / "app").url_map).templates() | {"/metrics"}
    assert routes <= declared, routes - declared
    assert label_values(samples, "method") <= {"GET", "POST", "DELETE", "PUT", "PATCH", "OTHER"}


def test_posture_report_is_served_to_the_posture_scope_only_and_recorded(
    admin_dep: tuple[Deployment, str, str],
) -> None:
    dep, admin_url, ops = admin_dep
    auditor = dep.tokens["auditor"]
    with httpx.Client(base_url=admin_url, timeout=30) as admin, dep.client() as public:
        assert admin.get("/admin/v1/posture", headers={"Authorization": f"Bearer {ops}"}
                         ).status_code == 403  # fmt: skip
        assert public.get("/admin/v1/posture", headers={"Authorization": f"Bearer {auditor}"}
                          ).status_code == 404  # fmt: skip
        r = admin.get("/admin/v1/posture", headers={"Authorization": f"Bearer {auditor}"})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["schema"] == "assay.posture.v1" and doc["daemon"] == "registry"
    assert doc["profile"] == "local" and isinstance(doc["findings"], list)
    assert dep.admin_token not in r.text and auditor not in r.text
    dep.stop()
    [record] = [x for x in dep.audit_records() if x["action"] == "admin.posture"]
    assert record["principal"] == "auditor" and record["extra"]["profile"] == "local"
    assert record["extra"]["listener"] == "admin"


def test_admin_listener_refuses_a_non_loopback_bind_without_the_opt_in(tmp_path: Path) -> None:
    dep = init_deployment(tmp_path)
    with_admin(dep, f"admin:\n  bind: 0.0.0.0:{free_port()}\n")
    proc = run_cli("serve", "--config", str(dep.config), timeout=60)
    assert proc.returncode != 0
    assert "admin" in proc.stderr and "allow_non_loopback" in proc.stderr, proc.stderr
