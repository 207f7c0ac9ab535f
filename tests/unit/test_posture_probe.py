"""The posture probe on real deployments on disk: each attack leaves the finding it must.

Registry deployments come from ``assay init`` (in-process), relay ones from the relay
tests' ``build_env``; each test then breaks one thing the way an operator or an attacker
would and checks the finding, its gate, and that nothing else was needed to see it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml

from assay.cli.admin import init_deployment
from assay.core.audit.runtime import open_log
from assay.core.posture import Evaluation, Profile, Severity
from assay.core.posture.probe import directive_exposure, unit_score
from assay.core.tokens import generate_token
from assay.registry.config import parse_config
from assay.registry.posture import registry_posture
from assay.relay import apikeys
from assay.relay.config import parse_config as parse_relay
from assay.relay.posture import relay_posture
from tests.relay.conftest import build_env

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "units" / "assay.service"


def _deployment(tmp: Path) -> Path:
    d = tmp / "d"
    init_deployment(d)
    return d


def _posture(d: Path, profile: Profile = Profile.PRODUCTION, **kw: object) -> Evaluation:
    config = d / "config.yaml"
    cfg = parse_config(config.read_bytes(), source=config)
    return registry_posture(cfg, base=d, source=config, profile=profile, **kw)  # type: ignore[arg-type]


def _ids(ev: Evaluation, severity: Severity | None = None) -> set[str]:
    return {
        r.finding.id
        for r in ev.results
        if r.effective is not None and (severity is None or r.effective is severity)
    }


def _hits(ev: Evaluation, finding: str) -> list[str]:
    return [f"{h.subject}: {h.detail}" for r in ev.results if r.finding.id == finding
            for h in r.hits]  # fmt: skip


def _edit(d: Path, change: dict[str, object]) -> None:
    config = d / "config.yaml"
    doc = yaml.safe_load(config.read_text())
    doc.update(change)
    config.write_text(yaml.safe_dump(doc))


def test_a_fresh_init_deployment_has_no_host_finding_under_production(tmp_path: Path) -> None:
    d = _deployment(tmp_path)
    ev = _posture(d, unit_files=(UNIT,))
    assert _ids(ev) == {"POS-EVIDENCE-BACKUPS", "POS-EVIDENCE-KEY-CUSTODY"}
    assert not ev.startup_failures and not ev.readiness_failures


def test_a_group_readable_secret_is_a_startup_fail(tmp_path: Path) -> None:
    d = _deployment(tmp_path)
    (d / "secrets" / "audit-hmac.key").chmod(0o640)
    ev = _posture(d, Profile.LOCAL)
    assert "POS-MODE-SECRET" in ev.startup_failures
    assert any("audit-hmac.key has mode 0640" in h for h in _hits(ev, "POS-MODE-SECRET"))


def test_a_symlinked_secret_is_seen_as_a_symlink_not_followed(tmp_path: Path) -> None:
    d = _deployment(tmp_path)
    key = d / "secrets" / "audit-hmac.key"
    real = d / "secrets" / "real.key"
    key.rename(real)
    key.symlink_to(real)
    ev = _posture(d, Profile.LOCAL)
    assert any("is a symlink" in h for h in _hits(ev, "POS-MODE-SECRET"))
    assert any("unreadable" in h for h in _hits(ev, "POS-SECRET-INVALID"))


def test_a_fifo_planted_as_a_secret_is_refused_without_hanging_the_probe(tmp_path: Path) -> None:
    d = _deployment(tmp_path)
    key = d / "secrets" / "audit-hmac.key"
    key.unlink()
    os.mkfifo(key, 0o600)
    ev = _posture(d, Profile.LOCAL)
    assert any("not a regular file" in h for h in _hits(ev, "POS-SECRET-INVALID"))


def test_a_world_writable_config_and_policy_are_startup_fails(tmp_path: Path) -> None:
    d = _deployment(tmp_path)
    (d / "config.yaml").chmod(0o666)
    policy = next((d / "policies").glob("*.yaml"))
    policy.chmod(0o646)
    ev = _posture(d, Profile.LOCAL)
    hits = _hits(ev, "POS-MODE-CONFIG")
    assert "POS-MODE-CONFIG" in ev.startup_failures
    assert any("config.yaml has mode 0666" in h for h in hits)
    assert any(policy.name in h for h in hits)


def test_an_open_state_directory_is_an_error_in_production(tmp_path: Path) -> None:
    d = _deployment(tmp_path)
    (d / "state" / "audit").chmod(0o755)
    ev = _posture(d)
    assert "POS-MODE-STATE" in _ids(ev, Severity.ERROR)
    assert "POS-MODE-STATE" in _ids(_posture(d, Profile.EVIDENCE_GRADE), Severity.READINESS)


def test_a_non_loopback_bind_is_a_finding_that_grows_with_the_profile(tmp_path: Path) -> None:
    d = _deployment(tmp_path)
    _edit(d, {"server": {"bind": "0.0.0.0:8470", "allow_non_loopback": True}})
    gates = {p: next(r.effective for r in _posture(d, p).results
                     if r.finding.id == "POS-BIND-NONLOOPBACK") for p in Profile}  # fmt: skip
    assert gates == {Profile.LOCAL: Severity.WARN, Profile.HOSTED_LAB: Severity.WARN,
                     Profile.PRODUCTION: Severity.ERROR,
                     Profile.EVIDENCE_GRADE: Severity.READINESS}  # fmt: skip


def test_a_waiver_excuses_the_bind_until_it_expires(tmp_path: Path) -> None:
    d = _deployment(tmp_path)
    waiver = {"finding": "POS-BIND-NONLOOPBACK", "reason": "VLAN is isolated",
              "approver": "sec lead", "expires": "2027-01-31"}  # fmt: skip
    _edit(d, {"server": {"bind": "[::]:8470", "allow_non_loopback": True},
              "deployment": {"profile": "production", "waivers": [waiver]}})  # fmt: skip
    before = _posture(d, now=dt.datetime(2027, 1, 31, 23, tzinfo=dt.UTC))
    assert "POS-BIND-NONLOOPBACK" not in _ids(before)
    after = _posture(d, now=dt.datetime(2027, 2, 1, 1, tzinfo=dt.UTC))
    assert {"POS-BIND-NONLOOPBACK", "POS-WAIVER-EXPIRED"} <= _ids(after, Severity.ERROR)


def test_a_tampered_audit_record_breaks_the_chain(tmp_path: Path) -> None:
    d = _deployment(tmp_path)
    log = d / "state" / "audit" / "audit.jsonl"
    assert "POS-AUDIT-CHAIN" not in _ids(_posture(d, Profile.EVIDENCE_GRADE))
    log.write_bytes(log.read_bytes().replace(b'"token.create"', b'"token.revoke"', 1))
    ev = _posture(d, Profile.EVIDENCE_GRADE)
    assert "POS-AUDIT-CHAIN" in ev.startup_failures
    assert "POS-AUDIT-CHAIN" in _ids(_posture(d, Profile.PRODUCTION), Severity.READINESS)


def test_a_record_waiting_for_a_checkpoint_goes_stale_and_a_checkpoint_cures_it(
    tmp_path: Path,
) -> None:
    d = _deployment(tmp_path)  # init writes one record and no checkpoint
    now = dt.datetime.now(dt.UTC)
    assert "POS-CHECKPOINT-STALE" not in _ids(_posture(d, now=now))
    later = now + dt.timedelta(minutes=10)  # grace: 2 x 60 s + 60 s
    stale = _posture(d, now=later)
    assert "POS-CHECKPOINT-STALE" in _ids(stale, Severity.ERROR)
    assert any("no checkpoint" in h for h in _hits(stale, "POS-CHECKPOINT-STALE"))
    cfg = parse_config((d / "config.yaml").read_bytes(), source=d / "config.yaml")
    with open_log(cfg.audit, base=d) as audit_log:
        assert audit_log.checkpoint_now() is not None
    assert "POS-CHECKPOINT-STALE" not in _ids(_posture(d, now=later + dt.timedelta(days=30)))


def test_an_unsigned_log_is_a_finding_not_a_stale_checkpoint(tmp_path: Path) -> None:
    d = _deployment(tmp_path)
    doc = yaml.safe_load((d / "config.yaml").read_text())
    del doc["audit"]["signing_key"]
    (d / "config.yaml").write_text(yaml.safe_dump(doc))
    ev = _posture(d, Profile.EVIDENCE_GRADE, now=dt.datetime.now(dt.UTC) + dt.timedelta(days=1))
    assert "POS-AUDIT-UNSIGNED" in ev.startup_failures
    assert "POS-CHECKPOINT-STALE" not in _ids(ev)


def test_a_signing_key_that_is_not_an_ed25519_key_is_invalid(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    d = _deployment(tmp_path)
    other = ec.generate_private_key(ec.SECP256R1())
    pem = other.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    (d / "secrets" / "audit-signing.key").write_bytes(pem)
    ev = _posture(d, Profile.LOCAL)
    assert "POS-SECRET-INVALID" in ev.startup_failures
    assert any("not an Ed25519" in h for h in _hits(ev, "POS-SECRET-INVALID"))


def test_a_signing_key_that_does_not_match_its_public_half_is_invalid(tmp_path: Path) -> None:
    d = _deployment(tmp_path)
    shutil.copy(d / "secrets" / "tuf-online.key", d / "secrets" / "audit-signing.key")
    ev = _posture(d, Profile.LOCAL)
    assert any("audit.signing_key" in h and "public half" in h
               for h in _hits(ev, "POS-SECRET-INVALID"))  # fmt: skip


def test_a_patterned_hmac_key_is_weak_and_a_short_one_invalid(tmp_path: Path) -> None:
    d = _deployment(tmp_path)
    key = d / "secrets" / "audit-hmac.key"
    key.write_bytes(b"0123456789abcdef" * 4)
    assert "POS-SECRET-WEAK" in _posture(d).startup_failures
    assert "POS-SECRET-WEAK" in _ids(_posture(d, Profile.LOCAL), Severity.WARN)
    key.write_bytes(b"too-short")
    assert "POS-SECRET-INVALID" in _posture(d, Profile.LOCAL).startup_failures


def test_a_raw_token_in_the_token_file_is_found(tmp_path: Path) -> None:
    d = _deployment(tmp_path)
    tokens = d / "secrets" / "tokens.json"
    doc = json.loads(tokens.read_text())
    doc["tokens"][0]["note"] = f"for ci: {generate_token()}"
    tokens.write_text(json.dumps(doc))
    ev = _posture(d)
    assert "POS-TOKEN-RAW" in ev.startup_failures
    assert all("assay_" not in h for h in _hits(ev, "POS-TOKEN-RAW"))  # never echoed


def test_an_old_key_is_a_key_age_finding(tmp_path: Path) -> None:
    d = _deployment(tmp_path)
    old = dt.datetime.now(dt.UTC) - dt.timedelta(days=400)
    os.utime(d / "secrets" / "tuf-online.key", (old.timestamp(), old.timestamp()))
    _edit(d, {"trust": {"online_key": {"file": "secrets/tuf-online.key"}}})
    ev = _posture(d, Profile.EVIDENCE_GRADE)
    assert any(h.startswith("trust.online_key: 400 days") for h in _hits(ev, "POS-KEY-AGE"))


def test_fault_injection_cannot_start_in_production(tmp_path: Path) -> None:
    d = _deployment(tmp_path)
    _edit(d, {"watchdog": {"allow_fault_injection": True}})
    assert "POS-FAULT-INJECTION" in _posture(d).startup_failures


def test_an_env_secret_is_reported_by_name_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                ) -> None:  # fmt: skip
    d = _deployment(tmp_path)
    monkeypatch.setenv("ASSAY_TEST_HMAC", "k" * 8 + "0123456789abcdefghijklmnopqrstuv")
    doc = yaml.safe_load((d / "config.yaml").read_text())
    doc["audit"]["hmac_key"] = {"env": "ASSAY_TEST_HMAC"}
    (d / "config.yaml").write_text(yaml.safe_dump(doc))
    ev = _posture(d)
    assert "POS-SECRET-ENV" in _ids(ev, Severity.ERROR)
    assert not any("0123456789" in h for r in ev.results for h in _hits(ev, r.finding.id))


# -- units ---------------------------------------------------------------------------------


def test_the_packaged_unit_scores_safe_and_a_bare_one_does_not(tmp_path: Path) -> None:
    bare = tmp_path / "assay.service"
    bare.write_text("[Service]\nExecStart=/usr/bin/assay serve\n")
    for unit in (UNIT, ROOT / "units" / "assay-relay.service"):
        score = unit_score(unit.name, (unit,))
        assert score.exposure is not None and score.exposure <= 4.0, score
        assert score.method == "systemd-analyze"  # the tool is part of the test host
    worse = unit_score("assay.service", (bare,))
    assert worse.exposure is not None and worse.exposure > 4.0
    assert directive_exposure(UNIT.read_text()) <= 1.0 < directive_exposure(bare.read_text())
    d = _deployment(tmp_path)
    ev = _posture(d, unit_files=(bare,))
    assert "POS-UNIT-SANDBOX" in _ids(ev, Severity.ERROR)


# -- the relay -----------------------------------------------------------------------------


def _relay(tmp: Path, profile: Profile = Profile.PRODUCTION) -> tuple[Evaluation, Path]:
    env = build_env(tmp, people=20)
    cfg = parse_relay(env.config_path.read_bytes(), source=str(env.config_path))
    ev = relay_posture(cfg, base=env.dir, source=env.config_path, profile=profile)
    return ev, env.dir


def test_a_relay_api_key_file_holding_the_raw_key_is_found(tmp_path: Path) -> None:
    ev, d = _relay(tmp_path / "a")
    assert "POS-TOKEN-RAW" not in _ids(ev)
    fp = next((d / "secrets").glob("*.fp"))
    fp.write_text(apikeys.generate_key())
    ev, _ = _relay_again(d)
    assert "POS-TOKEN-RAW" in ev.startup_failures
    hits = _hits(ev, "POS-TOKEN-RAW")
    assert any(h.startswith("auth.api_keys[") and "raw API key" in h for h in hits), hits
    assert all(apikeys.KEY_PREFIX not in h for h in hits)  # never echoed


def _relay_again(d: Path) -> tuple[Evaluation, Path]:
    config = d / "relay.yaml"
    cfg = parse_relay(config.read_bytes(), source=str(config))
    return relay_posture(cfg, base=d, source=config, profile=Profile.PRODUCTION), d


def test_a_relay_answer_signing_key_that_is_garbage_is_invalid(tmp_path: Path) -> None:
    _ev, d = _relay(tmp_path)
    (d / "secrets" / "answer-signing.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nxx\n")
    ev, _ = _relay_again(d)
    assert any(h.startswith("instance.answer_signing.key")
               for h in _hits(ev, "POS-SECRET-INVALID"))  # fmt: skip
