"""The real relay process over a real Postgres: snapshots and a live table, SIGHUP, the
audit chain verified, and the DSN's password nowhere in the log or the audit files."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from tests.conftest import run_cli
from tests.relay.conftest import RelayEnv, build_env
from tests.relay.pg.conftest import dsn_file, to_postgres
from tests.relay.pg.pgserver import PgServer
from tests.relay.test_e2e import running_relay

pytestmark = pytest.mark.e2e


def test_real_relay_serves_postgres_snapshots_and_live_pages_and_never_logs_the_password(
    tmp_path: Path, pg: PgServer, example_tables: None
) -> None:
    env: RelayEnv = build_env(tmp_path)
    dsn = dsn_file(env, pg.dsn("relay_ro"))
    to_postgres(env, "people", dsn)
    to_postgres(env, "households", dsn, mode="live")
    civil = env.doc["datasets"][0]
    civil["aggregates"] = [a for a in civil["aggregates"] if a["source_entity"] != "case"]
    log = tmp_path / "relay.log"
    with running_relay(env, log) as (url, proc):
        h = env.headers("all")
        people = httpx.get(f"{url}/v1/datasets/civil/entities/person/records",
                           params={"national_id": "X"}, headers=h, timeout=10)  # fmt: skip
        assert people.status_code == 200 and people.json()["snapshot"].startswith("snap:")
        agg = httpx.get(f"{url}/v1/datasets/civil/aggregates/people_by_municipality",
                        headers=env.headers("agg"), timeout=10)  # fmt: skip
        assert agg.status_code == 200 and agg.json()["suppressed_groups"] > 0
        q = {"status": "active", "limit": "5"}
        hh = httpx.get(f"{url}/v1/datasets/civil/entities/household/records",
                       params=q, headers=h, timeout=10)  # fmt: skip
        # A live table is named by a keyed tag too, never its locator's bare hash.
        assert hh.status_code == 200 and hh.json()["snapshot"].startswith("snap:")
        assert len(hh.json()["records"]) == 5
        proc.send_signal(signal.SIGHUP)  # reloads the snapshot, leaves the live table
        ready = httpx.get(f"{url}/readyz", headers=h, timeout=10).json()
        assert ready["ready"] and not ready["checks"]["tables"]["stale"]
    audit_dir = Path(env.doc["audit"]["dir"])
    out = run_cli("audit", "verify", str(audit_dir), "--key-file",
                  env.doc["audit"]["hmac_key"]["file"], "--json")  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    texts = [log.read_text(errors="replace")]
    texts += [p.read_text(errors="replace") for p in audit_dir.glob("audit*.jsonl")]
    assert f"dsn from file {dsn}" in texts[0]  # the log names the ref...
    for secret in pg.passwords.values():  # ...and no password anywhere
        assert all(secret not in text for text in texts)
