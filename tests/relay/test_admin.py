"""The relay's admin listener, against the real ``assay relay serve`` process.

Metrics scraped with prometheus_client's text parser; the table reload route driven by
rewriting a real source file (a valid one, then one that no longer decodes); the audit
log read afterwards.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from assay.core.metrics import RouteNamer
from assay.relay import apikeys
from assay.relay.settings import load_config, load_secrets
from assay.relay.wiring import assemble
from tests.conftest import free_port
from tests.e2e.admin_support import label_values, scrape, value
from tests.relay.conftest import FakeAudit, RelayEnv, build_env
from tests.relay.test_e2e import _command, running_relay

pytestmark = pytest.mark.e2e

RELOAD = "/admin/v1/tables/civil/households/reload"
RECORDS = "/v1/datasets/civil/entities/household/records"


def add_key(env: RelayEnv, key_id: str, *scopes: str) -> None:
    made = apikeys.new_key(key_id)
    fp = env.dir / "secrets" / f"{key_id}.fp"
    fp.write_bytes(made["fingerprint"].encode())
    fp.chmod(0o600)
    env.keys[key_id] = made["key"]
    env.doc["auth"]["api_keys"].append({"id": key_id, "fingerprint": {"file": str(fp)},
                                        "commitment": made["commitment"],
                                        "scopes": list(scopes)})  # fmt: skip


def replace_source(path: Path, data: bytes) -> None:
    """As an ETL job would: a new file renamed over the old one."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@pytest.fixture
def admin_relay(tmp_path: Path) -> Iterator[tuple[RelayEnv, str, str]]:
    """(env, public URL, admin URL): tables refreshed only on demand, so every reload
    in a test is the test's own."""
    env = build_env(tmp_path, people=300)
    for ds in env.doc["datasets"]:
        for table in ds["tables"]:
            table["refresh"] = {"mode": "manual"}
    port = free_port()
    env.doc["admin"] = {"bind": f"127.0.0.1:{port}", "unix_socket": str(tmp_path / "admin.sock")}
    add_key(env, "ops", "admin:metrics", "admin:reload")
    add_key(env, "scraper", "admin:metrics")
    add_key(env, "auditor", "admin:posture")
    with running_relay(env, tmp_path / "relay.log") as (url, _proc):
        yield env, url, f"http://127.0.0.1:{port}"


def _post(client: httpx.Client, env: RelayEnv, key: str, path: str = RELOAD) -> httpx.Response:
    return client.post(path, headers=env.headers(key, purpose=False))


def test_reload_answers_the_new_generation_and_a_failure_keeps_the_old_snapshot(
    admin_relay: tuple[RelayEnv, str, str],
) -> None:
    env, url, admin_url = admin_relay
    source = env.data / "households.csv"
    with httpx.Client(base_url=admin_url, timeout=30) as admin, \
            httpx.Client(base_url=url, timeout=30) as public:  # fmt: skip
        first = _post(admin, env, "ops")
        assert first.status_code == 200, first.text
        assert first.json()["changed"] is False  # the same bytes: the same snapshot
        lines = source.read_bytes().splitlines(keepends=True)
        replace_source(source, b"".join(lines[:-1]))
        second = _post(admin, env, "ops")
        assert second.status_code == 200, second.text
        body = second.json()
        assert body["changed"] is True and body["rows"] == len(lines) - 2
        assert body["generation"] > first.json()["generation"]
        assert body["loaded_at"] >= first.json()["loaded_at"]
        replace_source(source, b'"household_id","municipality"\n"H1",\x00\xff\n')
        failed = _post(admin, env, "ops")
        assert failed.status_code == 409, failed.text
        problem = failed.json()
        assert problem["code"] == "relay.reload_failed"
        assert problem["kept"]["generation"] == body["generation"]
        assert problem["reasons"]
        # The old snapshot still answers, on the public listener.
        page = public.get(RECORDS, params={"limit": "5"}, headers=env.headers("all"))
        assert page.status_code == 200, page.text
        assert page.json()["snapshot"] == body["snapshot"]
        assert "digest" not in body and body["snapshot"].startswith("snap:")
        samples = scrape(admin, env.keys["ops"])
    stale = value(samples, "assay_relay_snapshot_stale", dataset="civil", table="households")
    assert stale == 1
    assert value(samples, "assay_relay_snapshot_generation", dataset="civil",
                 table="households") == body["generation"]  # fmt: skip
    assert value(samples, "assay_relay_reload_failures", dataset="civil", table="households") == 1
    records = _audit(env)
    reloads = [r for r in records if r["route"] == "POST /admin/v1/tables/<dataset>/<table>/reload"]
    assert [(r["status"], r["extra"].get("outcome")) for r in reloads] == [
        (200, "unchanged"), (200, "reloaded"), (409, "failed"),
    ]  # fmt: skip
    assert all(r["action"] == "relay.table_reload" and r["principal"] == "ops"
               and r["target"] == "civil.households" for r in reloads)  # fmt: skip
    assert reloads[-1]["error_code"] == "relay.reload_failed"


def test_reload_needs_the_reload_scope_and_names_only_configured_tables(
    admin_relay: tuple[RelayEnv, str, str],
) -> None:
    env, url, admin_url = admin_relay
    with httpx.Client(base_url=admin_url, timeout=30) as admin, \
            httpx.Client(base_url=url, timeout=30) as public:  # fmt: skip
        assert _post(admin, env, "scraper").status_code == 403
        assert _post(admin, env, "all").status_code == 403  # dataset scopes are not admin
        assert admin.post(RELOAD).status_code == 401
        unknown = _post(admin, env, "ops", "/admin/v1/tables/civil/nope/reload")
        assert unknown.status_code == 404 and unknown.json()["code"] == "relay.table_unknown"
        # Not on the public listener, whoever asks; and no public route on admin.
        assert _post(public, env, "ops").status_code == 404
        assert public.get("/metrics", headers=env.headers("ops")).status_code == 404
        assert admin.get(RECORDS, headers=env.headers("all")).status_code == 404
        assert admin.get("/v1/datasets", headers=env.headers("ops")).status_code == 404
    records = _audit(env)
    assert not any("nope" in json.dumps(r) for r in records if r["status"] == 404
                   and r["route"].startswith("POST /admin"))  # fmt: skip


def test_metrics_follow_queries_scans_and_snapshots_by_template_only(
    admin_relay: tuple[RelayEnv, str, str],
) -> None:
    env, url, admin_url = admin_relay
    rng = random.Random(4242)
    markers: list[str] = []
    with httpx.Client(base_url=admin_url, timeout=30) as admin, \
            httpx.Client(base_url=url, timeout=30) as public:  # fmt: skip
        before = scrape(admin, env.keys["scraper"])
        for _ in range(2):
            r = public.get(RECORDS, params={"limit": "3"}, headers=env.headers("all"))
            assert r.status_code == 200
        r = public.get("/v1/datasets/civil/aggregates/people_by_municipality",
                       headers=env.headers("agg"))  # fmt: skip
        assert r.status_code == 200
        # An attacker's paths and queries, with ids in them, on both listeners.
        for i in range(40):
            marker = f"P{rng.getrandbits(36):x}"
            markers.append(marker)
            base = rng.choice(["/v1/datasets/civil/entities/household/records/", "/v1/",
                               "/admin/v1/tables/civil/", "/metrics/", "/"])  # fmt: skip
            client = public if i % 2 else admin
            client.request(rng.choice(["GET", "POST", "PROPFIND"]), base + marker,
                           params={"national_id": marker}, headers=env.headers("all"))  # fmt: skip
        after = scrape(admin, env.keys["scraper"])
    key = {"listener": "public", "method": "GET", "route": "/v1/datasets/<dataset>/entities/"
           "<entity>/records", "status": "200"}  # fmt: skip
    assert value(after, "assay_http_requests_total", **key) - value(
        before, "assay_http_requests_total", **key) == 2  # fmt: skip
    assert value(after, "assay_relay_scan_seconds_count", kind="records") - value(
        before, "assay_relay_scan_seconds_count", kind="records") == 2  # fmt: skip
    assert value(after, "assay_relay_scan_seconds_count", kind="aggregate") >= 1
    for ds, table in (("civil", "people"), ("civil", "households"), ("housing", "households")):
        assert value(after, "assay_relay_snapshot_age_seconds", dataset=ds, table=table) >= 0
        assert value(after, "assay_relay_snapshot_stale", dataset=ds, table=table) == 0
    assert value(after, "assay_build_info", daemon="relay") == 1
    assert not any(m in v for m in markers for _n, ls, _v in after for v in ls.values())
    assert label_values(after, "method") <= {"GET", "POST", "OTHER"}
    routes = label_values(after, "route")
    assert "unmatched" in routes
    loaded = load_config(env.config_path)
    parts = assemble(loaded, load_secrets(loaded), audit=FakeAudit())
    declared = RouteNamer(parts.app.url_map).templates() | {
        "/metrics", "/admin/v1/tables/<dataset>/<table>/reload"}  # fmt: skip
    assert routes <= declared, routes - declared


def test_posture_report_over_the_unix_socket_with_its_mode(
    admin_relay: tuple[RelayEnv, str, str],
) -> None:
    env, _url, _admin_url = admin_relay
    sock = env.dir / "admin.sock"
    assert oct(sock.stat().st_mode & 0o777) == oct(0o600)
    transport = httpx.HTTPTransport(uds=str(sock))
    with httpx.Client(transport=transport, base_url="http://admin", timeout=30) as admin:
        assert admin.get("/admin/v1/posture", headers=env.headers("scraper", purpose=False)
                         ).status_code == 403  # fmt: skip
        r = admin.get("/admin/v1/posture", headers=env.headers("auditor", purpose=False))
        assert r.status_code == 200, r.text
        assert scrape(admin, env.keys["scraper"])
    doc = r.json()
    assert doc["schema"] == "assay.posture.v1" and doc["daemon"] == "relay"
    assert not any(key in r.text for key in env.keys.values())
    [record] = [x for x in _audit(env) if x["action"] == "admin.posture"]
    assert record["principal"] == "auditor" and record["extra"]["listener"] == "admin"


def _audit(env: RelayEnv) -> list[dict[str, object]]:
    audit_dir = Path(env.doc["audit"]["dir"])
    return [
        json.loads(line)
        for f in sorted(audit_dir.glob("audit*.jsonl"))
        for line in f.read_text().split("\n")
        if line.strip()
    ]


def test_relay_refuses_a_non_loopback_admin_bind_without_the_opt_in(tmp_path: Path) -> None:
    env = build_env(tmp_path, people=20)
    env.doc["admin"] = {"bind": f"0.0.0.0:{free_port()}"}
    env.write()
    proc = subprocess.run(_command(env.config_path), capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
    assert proc.returncode != 0
    assert "admin.allow_non_loopback" in proc.stderr, proc.stderr
