"""Posture against the real daemons and the real CLI: refusal, readiness, ``assay doctor``.

The daemons are started as processes (``assay serve``, ``assay relay serve``) on loopback
and stopped by the fixtures; ``assay doctor`` runs as the operator would run it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml

from assay.core.posture import FINDINGS, Profile
from tests.conftest import Deployment, init_deployment, run_cli
from tests.relay.conftest import build_env

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


def _deployment_section(dep: Deployment, section: dict[str, Any], **extra: Any) -> None:
    doc = yaml.safe_load(dep.config.read_text())
    doc["deployment"] = section
    doc.update(extra)
    dep.config.write_text(yaml.safe_dump(doc))


def test_the_registry_refuses_to_start_under_production_with_a_startup_fail(
    tmp_path: Path,
) -> None:
    dep = init_deployment(tmp_path)
    _deployment_section(dep, {"profile": "production"}, watchdog={"allow_fault_injection": True})
    proc = run_cli("serve", "--config", str(dep.config), timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "config.posture_refused" in proc.stderr and "POS-FAULT-INJECTION" in proc.stderr
    assert "Traceback" not in proc.stderr
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{dep.url}/healthz", timeout=1)  # it never listened
    # The same deployment under its default profile (local) starts: only a warning.
    _deployment_section(dep, {"profile": "local"}, watchdog={"allow_fault_injection": True})
    dep.start()
    try:
        assert httpx.get(f"{dep.url}/readyz", timeout=5).status_code == 200
    finally:
        dep.stop()
    assert "POS-FAULT-INJECTION (finding_warn)" in dep.stderr()


def test_a_startup_fail_cannot_be_waived_in_the_config(tmp_path: Path) -> None:
    dep = init_deployment(tmp_path)
    waiver = {"finding": "POS-FAULT-INJECTION", "reason": "demo", "approver": "me",
              "expires": "2099-01-01"}  # fmt: skip
    _deployment_section(dep, {"profile": "production", "waivers": [waiver]})
    proc = run_cli("serve", "--config", str(dep.config), timeout=60)
    assert proc.returncode == 2 and "config.invalid" in proc.stderr
    assert "a startup gate cannot be waived" in proc.stderr and "Traceback" not in proc.stderr


def test_a_readiness_fail_keeps_readyz_failing_and_names_the_finding_only_to_details(
    tmp_path: Path,
) -> None:
    dep = init_deployment(tmp_path)
    _deployment_section(dep, {"profile": "evidence_grade"})
    dep.start(ready_path="/healthz")
    try:
        public = httpx.get(f"{dep.url}/readyz", timeout=5)
        assert public.status_code == 503
        assert public.json() == {"ready": False, "failing": ["posture"]}
        assert "POS-" not in public.text
        with dep.client() as c:
            detailed = c.get("/readyz").json()
        posture = detailed["checks"]["posture"]
        assert posture["ok"] is False and posture["profile"] == "evidence_grade"
        assert "POS-EVIDENCE-KEY-CUSTODY" in posture["findings"]
    finally:
        dep.stop()
    # Declared key custody satisfies it: the same deployment is then ready.
    evidence = [{"kind": "key_custody", "reference": "KC-2026-01", "declared_by": "ops",
                 "date": "2026-01-01"}]  # fmt: skip
    _deployment_section(dep, {"profile": "evidence_grade", "evidence": evidence})
    dep.start()
    try:
        with dep.client() as c:
            ready = c.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["posture"]["findings"] == []
    finally:
        dep.stop()


def test_the_relay_refuses_to_start_under_production_with_a_raw_api_key(tmp_path: Path) -> None:
    from assay.relay import apikeys

    env = build_env(tmp_path, people=20)
    env.doc["deployment"] = {"profile": "production"}
    env.write()
    fp = Path(env.doc["auth"]["api_keys"][0]["fingerprint"]["file"])
    fp.write_text(apikeys.generate_key())  # the raw key where its fingerprint belongs
    proc = run_cli("relay", "serve", "--config", str(env.config_path), timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    # The relay's own loader refuses first (the fingerprint fails its commitment), with
    # its own stable code; the posture gate is never the only line.
    assert "Traceback" not in proc.stderr
    doctor = run_cli("doctor", "--relay-config", str(env.config_path), "--json")
    assert doctor.returncode == 1, doctor.stdout + doctor.stderr
    out = json.loads(doctor.stdout)
    assert "POS-TOKEN-RAW" in out["reports"][0]["startup_fail"]


def test_the_relay_posture_check_is_in_its_readyz(tmp_path: Path) -> None:
    from tests.relay.test_e2e import running_relay

    env = build_env(tmp_path, people=20)
    env.doc["deployment"] = {"profile": "hosted_lab"}
    with running_relay(env, tmp_path / "relay.log") as (url, _proc):
        r = httpx.get(f"{url}/readyz", headers=env.headers("all"), timeout=5)
        assert r.status_code == 200
        assert r.json()["checks"]["posture"] == {"ok": True, "profile": "hosted_lab",
                                                 "findings": [], "worst": None}  # fmt: skip


# -- assay doctor --------------------------------------------------------------------------

_SEVERITY = {"enum": ["finding_warn", "finding_error", "readiness_fail", "startup_fail"]}
_DAY = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"}
REPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["schema", "daemon", "profile", "evaluated_at", "ok", "worst", "counts",
                 "startup_fail", "readiness_fail", "findings", "evidence", "waivers", "config"],
    "additionalProperties": False,
    "properties": {
        "schema": {"const": "assay.posture.v1"},
        "config": {"type": "string"},
        "daemon": {"enum": ["registry", "relay"]},
        "profile": {"enum": [p.value for p in Profile]},
        "evaluated_at": {"type": "string", "pattern": r"Z$"},
        "ok": {"type": "boolean"},
        "worst": {"oneOf": [{"type": "null"}, _SEVERITY]},
        "counts": {"type": "object", "required": _SEVERITY["enum"],
                   "additionalProperties": {"type": "integer", "minimum": 0}},
        "startup_fail": {"type": "array", "items": {"type": "string"}},
        "readiness_fail": {"type": "array", "items": {"type": "string"}},
        "evidence": {"type": "array"},
        "waivers": {"type": "array"},
        "findings": {"type": "array", "items": {
            "type": "object", "additionalProperties": False,
            "required": ["id", "title", "severity", "effective", "stands", "waived", "waiver",
                         "evidence", "hits", "remediation"],
            "properties": {
                "id": {"enum": [f.id for f in FINDINGS]},
                "title": {"type": "string"},
                "severity": {"oneOf": [_SEVERITY, {"const": "not_applicable"}]},
                "effective": {"oneOf": [{"type": "null"}, _SEVERITY]},
                "stands": {"type": "boolean"},
                "waived": {"type": "boolean"},
                "waiver": {"oneOf": [{"type": "null"}, {
                    "type": "object", "required": ["finding", "reason", "approver", "expires",
                                                   "refused"],
                    "properties": {"expires": _DAY}}]},
                "evidence": {"oneOf": [{"type": "null"}, {
                    "type": "object", "required": ["kind", "reference", "declared_by", "date",
                                                   "expires"]}]},
                "hits": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["subject", "detail"],
                    "additionalProperties": False,
                    "properties": {"subject": {"type": "string"},
                                   "detail": {"type": "string"}}}},
                "remediation": {"type": "string", "minLength": 1},
            }}},
    },
}  # fmt: skip
DOCTOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["schema", "exit_code", "ok", "reports"],
    "additionalProperties": False,
    "properties": {
        "schema": {"const": "assay.doctor.v1"},
        "exit_code": {"enum": [0, 1]},
        "ok": {"type": "boolean"},
        "reports": {"type": "array", "minItems": 1, "items": REPORT_SCHEMA},
    },
}


def test_doctor_json_follows_its_schema_for_both_daemons(tmp_path: Path) -> None:
    dep = init_deployment(tmp_path / "reg")
    env = build_env(tmp_path / "relay", people=20)
    waiver = {"finding": "POS-BIND-NONLOOPBACK", "reason": "lab VLAN", "approver": "ops",
              "expires": "2000-01-01"}  # fmt: skip
    _deployment_section(dep, {"profile": "hosted_lab", "waivers": [waiver], "evidence": [
        {"kind": "backups", "reference": "BK-1", "declared_by": "ops", "date": "2026-01-01"}]},
        server={"bind": "0.0.0.0:8470", "allow_non_loopback": True})  # fmt: skip
    proc = run_cli("doctor", "--config", str(dep.config), "--relay-config",
                   str(env.config_path), "--unit", str(ROOT / "units" / "assay.service"),
                   "--json")  # fmt: skip
    out = json.loads(proc.stdout)
    jsonschema.validate(out, DOCTOR_SCHEMA)
    registry, relay = out["reports"]
    assert (registry["daemon"], relay["daemon"]) == ("registry", "relay")
    by_id = {f["id"]: f for f in registry["findings"]}
    assert by_id["POS-BIND-NONLOOPBACK"]["waiver"]["refused"].startswith("expired")
    assert by_id["POS-BIND-NONLOOPBACK"]["effective"] == "finding_warn"
    assert by_id["POS-WAIVER-EXPIRED"]["stands"] is True
    assert registry["evidence"][0]["reference"] == "BK-1"
    assert proc.returncode == out["exit_code"] == 0  # hosted_lab: warnings only
    strict = run_cli("doctor", "--config", str(dep.config), "--profile", "production", "--json")
    assert strict.returncode == 1 and json.loads(strict.stdout)["exit_code"] == 1
    text = run_cli("doctor", "--config", str(dep.config), "--profile", "production")
    assert text.returncode == 1 and "POS-BIND-NONLOOPBACK" in text.stdout
    assert "fix:" in text.stdout


@pytest.mark.parametrize(
    "args",
    [
        ["doctor", "--config", "/nonexistent/config.yaml"],
        ["doctor", "--config", "{bad}"],
        ["doctor", "--relay-config", "/dev/null"],
        ["doctor", "--profile", "staging"],
        ["doctor", "--config", "{fifo}"],
    ],
)
def test_doctor_refuses_bad_input_without_a_traceback(tmp_path: Path, args: list[str]) -> None:
    if "{bad}" in args:
        bad = tmp_path / "config.yaml"
        bad.write_text("server: [unclosed\n")
        args = [str(bad) if a == "{bad}" else a for a in args]
    if "{fifo}" in args:  # a FIFO where the config belongs: refused, not waited on
        fifo = tmp_path / "config.fifo"
        os.mkfifo(fifo)
        args = [str(fifo) if a == "{fifo}" else a for a in args]
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
