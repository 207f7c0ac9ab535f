"""The pure posture evaluator, searched with hypothesis: waivers, evidence, profile order.

Every property is stated over arbitrary observations and arbitrary deployments (waivers
for any finding, expired or not, built past the config validator so that the evaluator
itself must hold the line, as it must for ``assay doctor --profile``).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from assay.core.errors import ConfigError
from assay.core.posture import FINDINGS, DeploymentSection, Evidence, Profile, Severity, Waiver
from assay.core.posture.catalogue import BY_ID
from assay.core.posture.evaluate import evaluate, report
from assay.core.posture.model import PROFILE_ORDER, EvidenceKind, severity_rank
from assay.core.posture.observations import (
    AuditState,
    Bind,
    Observations,
    PathMode,
    SecretCheck,
    UnitScore,
    weakness,
)
from assay.core.schema import validate

NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
TODAY = NOW.date()
days = st.integers(min_value=-400, max_value=400).map(lambda d: TODAY + dt.timedelta(days=d))
maybe_text = st.one_of(st.none(), st.sampled_from(["bad", "wrong kind", "short"]))

# fmt: off
observations = st.builds(
    Observations,
    daemon=st.sampled_from(["registry", "relay"]),
    binds=st.lists(st.builds(Bind, st.sampled_from(["0.0.0.0:1", "127.0.0.1:1"]),
                             st.booleans()), max_size=2).map(tuple),
    paths=st.lists(
        st.builds(PathMode, st.just("r"), st.just("/p"),
                  st.sampled_from(["config", "secret", "state"]),
                  st.one_of(st.none(), st.integers(0, 0o777)), st.booleans(), st.booleans()),
        max_size=4,
    ).map(tuple),
    secrets=st.lists(
        st.builds(SecretCheck, st.just("k"), st.sampled_from(["file", "env", "credential"]),
                  maybe_text, maybe_text, maybe_text,
                  st.one_of(st.none(), st.floats(0, 1e9)), st.booleans()),
        max_size=4,
    ).map(tuple),
    units=st.lists(st.builds(UnitScore, st.just("u"), st.just("/u"),
                             st.one_of(st.none(), st.floats(0, 10))), max_size=2).map(tuple),
    audit=st.builds(
        AuditState, st.booleans(), st.lists(st.just("break"), max_size=3).map(tuple),
        st.integers(0, 10), st.booleans(),
        st.one_of(st.none(), st.floats(0, 1e6)), st.one_of(st.none(), st.floats(0, 1e6)),
    ),
    fault_injection=st.booleans(),
)
# fmt: on

waiver = st.builds(
    Waiver.model_construct,
    finding=st.sampled_from([f.id for f in FINDINGS]),
    reason=st.just("accepted risk"),
    approver=st.just("ops lead"),
    expires=days,
)
evidence = st.builds(
    Evidence.model_construct,
    kind=st.sampled_from(list(EvidenceKind)),
    reference=st.just("TICKET-1"),
    declared_by=st.just("ops"),
    date=days,
    expires=st.one_of(st.none(), days),
)


@st.composite
def deployments(draw: st.DrawFn) -> DeploymentSection:
    """Any deployment, validated or not: the evaluator must not trust the validator."""
    return DeploymentSection.model_construct(
        profile=draw(st.sampled_from(list(Profile))),
        evidence=draw(st.lists(evidence, max_size=4)),
        waivers=draw(st.lists(waiver, max_size=6, unique_by=lambda w: w.finding)),
    )


def _effective(dep: DeploymentSection, obs: Observations, p: Profile) -> dict[str, int]:
    ev = evaluate(obs, dep, now=NOW, profile=p)
    return {r.finding.id: severity_rank(r.effective) for r in ev.results}


@settings(max_examples=300, deadline=None)
@given(observations, deployments(), st.sampled_from(list(Profile)))
def test_a_waiver_never_lowers_a_startup_fail(
    obs: Observations, dep: DeploymentSection, profile: Profile
) -> None:
    ev = evaluate(obs, dep, now=NOW, profile=profile)
    bare = evaluate(obs, dep.model_copy(update={"waivers": []}), now=NOW, profile=profile)
    unwaived = {r.finding.id: r.effective for r in bare.results}
    for r in ev.results:
        if r.gate is Severity.STARTUP:
            assert r.effective is Severity.STARTUP, r
            assert unwaived[r.finding.id] is Severity.STARTUP
            if r.waiver is not None:
                assert r.waiver_refused is not None
    assert set(ev.startup_failures) == set(bare.startup_failures)


@settings(max_examples=300, deadline=None)
@given(observations, deployments(), st.sampled_from(list(Profile)))
def test_an_expired_waiver_never_applies_and_is_itself_a_finding(
    obs: Observations, dep: DeploymentSection, profile: Profile
) -> None:
    ev = evaluate(obs, dep, now=NOW, profile=profile)
    live = [w for w in dep.waivers if w.expires >= TODAY]
    expired = [w for w in dep.waivers if w.expires < TODAY]
    without = evaluate(obs, dep.model_copy(update={"waivers": live}), now=NOW, profile=profile)
    # Removing the expired waivers changes nothing but the POS-WAIVER-EXPIRED finding.
    a = {r.finding.id: r.effective for r in ev.results if r.finding.id != "POS-WAIVER-EXPIRED"}
    b = {r.finding.id: r.effective for r in without.results
         if r.finding.id != "POS-WAIVER-EXPIRED"}  # fmt: skip
    assert a == b
    for r in ev.results:
        if r.waiver is not None and r.waiver.expires < TODAY:
            assert r.waiver_refused is not None and r.effective == (
                None if r.evidence is not None else r.gate
            )
    stale = next((r for r in ev.results if r.finding.id == "POS-WAIVER-EXPIRED"), None)
    assert (stale is not None) == bool(expired)
    if stale is not None:
        assert {h.subject for h in stale.hits} == {w.finding for w in expired}
        assert stale.effective == BY_ID["POS-WAIVER-EXPIRED"].gate(profile)


@settings(max_examples=300, deadline=None)
@given(observations, deployments())
def test_a_stricter_profile_never_gates_less(obs: Observations, dep: DeploymentSection) -> None:
    levels = [_effective(dep, obs, p) for p in PROFILE_ORDER]
    for looser, stricter in itertools.pairwise(levels):
        assert looser.keys() == stricter.keys()
        for fid, rank in looser.items():
            assert stricter[fid] >= rank, fid
    worst = [evaluate(obs, dep, now=NOW, profile=p).worst for p in PROFILE_ORDER]
    ranks = [severity_rank(w) for w in worst]
    assert ranks == sorted(ranks)


@settings(max_examples=200, deadline=None)
@given(observations, deployments(), st.sampled_from(list(Profile)))
def test_the_report_is_json_and_counts_what_stands(
    obs: Observations, dep: DeploymentSection, profile: Profile
) -> None:
    ev = evaluate(obs, dep, now=NOW, profile=profile)
    out = json.loads(json.dumps(report(ev)))
    standing = [f for f in out["findings"] if f["stands"]]
    assert sum(out["counts"].values()) == len(standing)
    assert out["ok"] == (not any(f["effective"] in ("readiness_fail", "startup_fail")
                                 for f in standing))  # fmt: skip
    for f in out["findings"]:
        assert f["id"] in BY_ID and f["remediation"] == BY_ID[f["id"]].remediation
        assert not (f["waived"] and f["effective"] is not None)


def test_the_catalogue_gates_are_monotone_over_the_profile_order() -> None:
    for row in FINDINGS:
        ranks = [severity_rank(row.gate(p)) for p in PROFILE_ORDER]
        assert ranks == sorted(ranks), row.id


def _deployment(profile: Profile, finding: str, expires: dt.date) -> dict[str, Any]:
    return {"profile": profile.value, "waivers": [{"finding": finding, "reason": "r",
            "approver": "a", "expires": expires.isoformat()}]}  # fmt: skip


@pytest.mark.parametrize("profile", list(Profile))
@pytest.mark.parametrize("row", FINDINGS, ids=lambda r: r.id)
def test_config_load_refuses_a_waiver_of_a_startup_gate(profile: Profile, row: Any) -> None:
    data = _deployment(profile, row.id, TODAY)
    if row.gate(profile) is Severity.STARTUP or not row.waivable:
        with pytest.raises(ConfigError) as info:
            validate(DeploymentSection, data)
        assert row.id in info.value.detail
    else:
        assert validate(DeploymentSection, data).waivers[0].finding == row.id


def test_config_load_refuses_a_waiver_without_expiry_or_of_an_unknown_finding() -> None:
    base = {"finding": "POS-BIND-NONLOOPBACK", "reason": "r", "approver": "a"}
    with pytest.raises(ConfigError, match="expires"):
        validate(DeploymentSection, {"waivers": [base]})
    with pytest.raises(ConfigError, match="no finding"):
        validate(DeploymentSection, {"waivers": [{**base, "finding": "POS-NOPE",
                                                  "expires": "2027-01-01"}]})  # fmt: skip
    with pytest.raises(ConfigError, match="second waiver"):
        w = {**base, "expires": "2027-01-01"}
        validate(DeploymentSection, {"waivers": [w, w]})


def test_an_expired_waiver_still_loads_and_is_reported() -> None:
    dep = validate(DeploymentSection, _deployment(Profile.PRODUCTION, "POS-BIND-NONLOOPBACK",
                                                  TODAY - dt.timedelta(days=1)))  # fmt: skip
    obs = Observations("registry", binds=(Bind("0.0.0.0:8470", False),))
    ev = evaluate(obs, dep, now=NOW)
    assert set(ev.standing(Severity.ERROR)) >= {"POS-BIND-NONLOOPBACK", "POS-WAIVER-EXPIRED"}
    on_the_day = evaluate(obs, dep, now=NOW - dt.timedelta(days=1))
    assert "POS-BIND-NONLOOPBACK" not in on_the_day.standing(Severity.ERROR)


def test_evidence_satisfies_only_its_own_findings_and_only_while_valid() -> None:
    dep = validate(DeploymentSection, {"profile": "evidence_grade", "evidence": [
        {"kind": "backups", "reference": "RB-7", "declared_by": "ops", "date": "2026-01-01",
         "expires": TODAY.isoformat()}]})  # fmt: skip
    obs = Observations("relay")
    ev = evaluate(obs, dep, now=NOW)
    by = {r.finding.id: r for r in ev.results}
    assert by["POS-EVIDENCE-BACKUPS"].effective is None
    assert by["POS-EVIDENCE-BACKUPS"].evidence is not None
    assert by["POS-EVIDENCE-KEY-CUSTODY"].effective is Severity.READINESS
    later = evaluate(obs, dep, now=NOW + dt.timedelta(days=1))
    assert "POS-EVIDENCE-BACKUPS" in later.standing(Severity.ERROR)


def test_a_registry_only_finding_never_fires_for_the_relay() -> None:
    for daemon in ("registry", "relay"):
        ev = evaluate(Observations(daemon, fault_injection=True), DeploymentSection(), now=NOW,
                      profile=Profile.PRODUCTION)  # fmt: skip
        assert ("POS-FAULT-INJECTION" in ev.startup_failures) == (daemon == "registry")


@pytest.mark.parametrize(
    "secret",
    [b"a" * 64, b"ab" * 32, b"password" * 8, b"0123" * 16, bytes(range(4)) * 16],
)
def test_a_patterned_secret_is_weak(secret: bytes) -> None:
    assert weakness(secret) is not None


@given(st.binary(min_size=32, max_size=64))
def test_random_secrets_are_rarely_weak_and_hex_keys_never(raw: bytes) -> None:
    assert weakness(raw.hex().encode()) is None or len(set(raw.hex())) < 8


def test_the_gate_refuses_startup_naming_each_finding_and_judges_dates_live() -> None:
    from assay.core.errors import PostureRefused
    from assay.core.posture.gate import PostureGate

    waiver = {"finding": "POS-BIND-NONLOOPBACK", "reason": "r", "approver": "a",
              "expires": TODAY.isoformat()}  # fmt: skip
    dep = validate(DeploymentSection, {"profile": "evidence_grade", "waivers": [waiver],
        "evidence": [{"kind": "key_custody", "reference": "K", "declared_by": "o",
                      "date": "2026-01-01"}]})  # fmt: skip
    obs = Observations("relay", binds=(Bind("0.0.0.0:8480", False),))
    clock = [NOW]
    gate = PostureGate(evaluate(obs, dep, now=NOW), clock=lambda: clock[0])
    gate.enforce_startup()  # nothing at startup_fail
    assert gate.readiness()["ok"] is True
    clock[0] = NOW + dt.timedelta(days=1)  # the waiver lapses while the daemon runs
    ready = gate.readiness()
    assert ready["ok"] is False
    assert set(ready["findings"]) == {"POS-BIND-NONLOOPBACK", "POS-WAIVER-EXPIRED"}
    assert gate.report()["readiness_fail"] == ready["findings"]
    refused = PostureGate(evaluate(Observations("relay", audit=AuditState(
        signing_configured=False)), dep, now=NOW))  # fmt: skip
    with pytest.raises(PostureRefused) as info:
        refused.enforce_startup()
    assert info.value.code == "config.posture_refused"
    assert "POS-AUDIT-UNSIGNED" in info.value.detail
    assert any(r.startswith("POS-AUDIT-UNSIGNED: ") for r in info.value.reasons)


def test_a_sticky_config_directory_is_not_a_finding_but_an_open_one_is() -> None:
    def config_dir(mode: int) -> set[str]:
        obs = Observations("registry", paths=(PathMode("config directory", "/d", "config",
                                                       mode),))  # fmt: skip
        return set(evaluate(obs, DeploymentSection(), now=NOW).startup_failures)

    assert config_dir(0o1777) == set()
    assert config_dir(0o777) == {"POS-MODE-CONFIG"}
    assert config_dir(0o755) == set()
