"""The real relay process on loopback, with the real audit log, verified by `assay audit verify`.

Skipped until ``assay.core.audit.runtime`` (the daemon's audit glue) exists. Started through
``assay relay serve`` once the CLI registers the relay group, else through the same
``relay_cmd`` entry point directly.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port, run_cli
from tests.relay.conftest import RelayEnv, build_env, source_state

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(
        importlib.util.find_spec("assay.core.audit.runtime") is None,
        reason="assay.core.audit.runtime not present yet",
    ),
]

LAUNCH = (
    "import sys, argparse\n"
    "from assay.cli import relay_cmd\n"
    "p = argparse.ArgumentParser(); relay_cmd.register(p.add_subparsers())\n"
    "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n"
)


def _command(config: Path) -> list[str]:
    from assay.cli.main import build_parser

    try:
        build_parser().parse_args(["relay", "serve", "--config", str(config)])
    except SystemExit:
        return [sys.executable, "-c", LAUNCH, "relay", "serve", "--config", str(config)]
    return [sys.executable, "-m", "assay", "relay", "serve", "--config", str(config)]


@contextlib.contextmanager
def running_relay(env: RelayEnv, log_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``assay relay serve`` on a free port until ready; SIGTERM on the way out."""
    port = free_port()
    env.doc["server"]["bind"] = f"127.0.0.1:{port}"
    env.write()
    log = log_path.open("wb")
    proc = subprocess.Popen(_command(env.config_path), stdin=subprocess.DEVNULL, stdout=log,
                            stderr=log)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if proc.poll() is not None:
                raise AssertionError(log_path.read_text())
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        else:
            raise AssertionError("relay did not become ready")
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        log.close()


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[RelayEnv, str, subprocess.Popen[bytes]]]:
    env = build_env(tmp_path, people=800)
    with running_relay(env, tmp_path / "relay.log") as (url, proc):
        yield env, url, proc


def test_real_relay_answers_audits_and_leaves_a_verifiable_chain(
    live: tuple[RelayEnv, str, subprocess.Popen[bytes]],
) -> None:
    env, url, proc = live
    sources = sorted(env.data.glob("*"))
    before = {p: source_state(p) for p in sources}
    nid = "SYN-"  # any national id prefix: the answer may be empty, the audit must hash it
    with httpx.Client(base_url=url, timeout=30) as c:
        h = env.headers("all")
        assert c.get("/v1/datasets/civil/entities/household/records/H0000001", headers=h
                     ).status_code == 200  # fmt: skip
        r = c.get(f"/v1/datasets/civil/entities/person/records?national_id={nid}12345", headers=h)
        assert r.status_code == 200
        assert c.get("/v1/datasets/civil/aggregates/people_by_municipality",
                     headers=env.headers("agg")).status_code == 200  # fmt: skip
        assert c.get("/v1/datasets/civil/aggregates/people_by_municipality",
                     headers=env.headers("read")).status_code == 403  # fmt: skip
        assert c.get("/v1/datasets/civil").status_code == 401
        signed = c.get("/v1/datasets/civil/entities/household/records/H0000001",
                       headers=h | {"Accept": "application/jose"})  # fmt: skip
        assert signed.headers["content-type"] == "application/jose"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    audit_dir = Path(env.doc["audit"]["dir"])
    key = env.doc["audit"]["hmac_key"]["file"]
    pub = str(Path(env.doc["audit"]["signing_key"]["file"]).with_suffix(".pub"))
    out = run_cli("audit", "verify", str(audit_dir), "--key-file", key, "--checkpoint",
                  str(audit_dir / "checkpoints.jsonl"), "--public-key", pub, "--json")  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    records = [
        json.loads(line)
        for f in sorted(audit_dir.glob("audit*.jsonl"))
        for line in f.read_text().splitlines()
        if line.strip()
    ]
    relay_records = [r for r in records if r["route"] and r["route"].startswith("GET /v1")]
    assert len(relay_records) == 6
    assert f"{nid}12345" not in json.dumps(records)
    assert any("hash.national_id.eq.1" in r["extra"] for r in relay_records)
    assert {p: source_state(p) for p in sources} == before
    pub = env.dir / "answer.pub"
    pub.write_bytes(env.public_pem)
    verify = subprocess.run(
        [sys.executable, "-c", LAUNCH, "relay", "verify-answer", signed.text,
         "--public-key", str(pub)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr


def test_oversized_headers_get_an_audited_431_not_a_bare_400(
    live: tuple[RelayEnv, str, subprocess.Popen[bytes]],
) -> None:
    env, url, proc = live
    cap = int(env.doc["server"].get("max_header_bytes", 16 * 1024))
    pad = env.headers("all") | {"X-Pad": "a" * (cap + 1)}
    with httpx.Client(base_url=url, timeout=30) as c:
        r = c.get("/v1/datasets/civil", headers=pad)
        by_id = c.get("/v1/datasets/civil/entities/person/records/P00000009", headers=pad)
        unmatched = c.get("/v1/P00000009/x", headers=pad)
    assert r.status_code == 431 and r.json()["code"] == "request.headers_too_large"
    assert by_id.status_code == unmatched.status_code == 431
    assert r.headers["x-content-type-options"] == "nosniff"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    audit_dir = Path(env.doc["audit"]["dir"])
    records = [
        json.loads(line)
        for f in sorted(audit_dir.glob("audit*.jsonl"))
        for line in f.read_text().splitlines()
        if line.strip()
    ]
    refused = [r for r in records if r.get("status") == 431]
    # The route is the template the path matches, or a keyed hash: never the raw path.
    assert [r["route"] for r in refused][:2] == [
        "GET /v1/datasets/<dataset>",
        "GET /v1/datasets/<dataset>/entities/<entity>/records/<record_id>",
    ]
    assert refused[2]["route"].startswith("GET unmatched:hmac-sha256:")
    assert all(r["error_code"] == "request.headers_too_large" for r in refused)
    assert "P00000009" not in json.dumps(records)


def test_registry_and_relay_can_write_one_shared_chain(tmp_path: Path) -> None:
    """Both daemons on one audit directory, key and log id: their records interleave in
    one chain (flock + catch-up on each batch), and the whole verifies with checkpoints."""
    from tests.conftest import SAMPLES, init_deployment, upload

    dep = init_deployment(tmp_path / "registry", max_bytes=1024 * 1024)
    env = build_env(tmp_path / "relay", people=200)
    env.doc["audit"] = {
        "dir": str(dep.audit_dir),
        "hmac_key": {"file": str(dep.dir / "secrets" / "audit-hmac.key")},
        "signing_key": {"file": str(dep.dir / "secrets" / "audit-signing.key")},
        "log_id": "assay",
    }
    dep.start()
    st = (SAMPLES / "sample.safetensors").read_bytes()
    try:
        with running_relay(env, tmp_path / "relay.log") as (url, relay):
            with dep.client() as reg, httpx.Client(base_url=url, timeout=30) as rel:
                for i in range(10):  # alternate writers, so records interleave in the chain
                    assert upload(reg, st, name=f"shared/{i}").status_code in (200, 201)
                    r = rel.get("/v1/datasets/civil/entities/household/records/H0000001",
                                headers=env.headers("all"))  # fmt: skip
                    assert r.status_code == 200
            relay.send_signal(signal.SIGTERM)
            assert relay.wait(timeout=30) == 0
    finally:
        assert dep.stop() == 0
    records = dep.audit_records()
    routes = [str(r["route"]) for r in records]
    assert sum(r.startswith("POST /v1/artifacts") for r in routes) == 10
    assert sum(r.startswith("GET /v1/datasets") for r in routes) >= 10
    assert [r["seq"] for r in records] == list(range(1, len(records) + 1))
    out = run_cli("audit", "verify", str(dep.audit_dir), "--key-file",
                  str(dep.dir / "secrets" / "audit-hmac.key"), "--checkpoint",
                  str(dep.audit_dir / "checkpoints.jsonl"), "--public-key",
                  str(dep.dir / "secrets" / "audit-signing.pub"), "--json")  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_restart_does_not_reset_a_row_budget(tmp_path: Path) -> None:
    """The real daemon, killed with SIGKILL (no clean shutdown) after spending a key's
    budget, still refuses that key when it comes back; another key is untouched."""
    env = build_env(tmp_path, people=200)
    env.doc["row_budgets"] = {"state_dir": str(tmp_path / "state" / "budgets")}
    household = next(e for e in env.doc["datasets"][0]["entities"] if e["name"] == "household")
    household["row_budget"] = {"rows": 12, "window_seconds": 86_400}
    path = "/v1/datasets/civil/entities/household/records?limit=5"
    with running_relay(env, tmp_path / "relay-1.log") as (url, proc):
        with httpx.Client(base_url=url, timeout=30) as c:
            counts = [c.get(path, headers=env.headers("all")).json()["count"] for _ in range(3)]
            refused = c.get(path, headers=env.headers("all"))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert counts == [5, 5, 2]
    assert refused.status_code == 429 and "Retry-After" in refused.headers
    restarted = running_relay(env, tmp_path / "relay-2.log")
    with restarted as (url, _proc), httpx.Client(base_url=url, timeout=30) as c:
        again = c.get(path, headers=env.headers("all"))
        other = c.get(path, headers=env.headers("read"))
        lookup = c.get("/v1/datasets/civil/entities/household/records/H0000001",
                       headers=env.headers("all"))  # fmt: skip
    assert again.status_code == 429 and again.json()["code"] == "relay.row_budget_exhausted"
    assert again.headers["Assay-Row-Budget-Remaining"] == "0"
    assert lookup.status_code == 429
    assert other.status_code == 200 and other.headers["Assay-Row-Budget-Remaining"] == "7"
