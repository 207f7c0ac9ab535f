"""Probe and evaluate one deployment; journal what the startup gate saw.

Why here: the registry and the relay each say *what* to look at (``assay.registry.posture``,
``assay.relay.posture`` build a ``Target``); how a target is probed and judged is the
same for both. ``thorough`` (doctor, the admin route) runs every probe; a daemon at
startup skips the costly ones (``systemd-analyze``, reading the whole audit log) when no
gate under its profile needs them, so a ``local`` deployment starts as fast as before.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import replace
from pathlib import Path

from assay.core import logsetup
from assay.core.posture.catalogue import BY_ID
from assay.core.posture.config import DeploymentSection
from assay.core.posture.evaluate import Evaluation, evaluate
from assay.core.posture.gate import PostureGate
from assay.core.posture.model import Profile, Severity, severity_rank
from assay.core.posture.probe import Target, observe


def resolve(base: Path, value: str) -> Path:
    """A config path: absolute as given, else relative to the config's directory."""
    p = Path(value)
    return p if p.is_absolute() else base / p


def _gated(finding_ids: tuple[str, ...], profile: Profile, at_least: Severity) -> bool:
    return any(severity_rank(BY_ID[f].gate(profile)) >= at_least.rank for f in finding_ids)


def posture(
    target: Target,
    deployment: DeploymentSection,
    *,
    now: dt.datetime | None = None,
    profile: Profile | None = None,
    thorough: bool = True,
) -> Evaluation:
    """Probe ``target`` and evaluate it under ``profile`` (default: the configured one)."""
    chosen = deployment.profile if profile is None else profile
    verify = thorough or _gated(("POS-AUDIT-CHAIN",), chosen, Severity.READINESS)
    if not thorough and not _gated(("POS-UNIT-SANDBOX", "POS-UNIT-UNSCORED"), chosen,
                                   Severity.WARN):  # fmt: skip
        target = replace(target, unit_names=())
    when = dt.datetime.now(dt.UTC) if now is None else now
    observations = observe(target, verify_audit=verify, now=when.timestamp(), run_tools=thorough)
    return evaluate(observations, deployment, now=when, profile=chosen)


def announce(gate: PostureGate) -> None:
    """Journal the posture at startup: the profile and evidence, then each standing finding
    (error priority from finding_error up), so the operator sees what the gate saw."""
    ev = gate.startup
    declared = ", ".join(f"{e.kind}: {e.reference}" for e in ev.deployment.evidence) or "none"
    logsetup.event("posture", f"deployment profile {ev.profile.value}; evidence {declared}",
                   profile=ev.profile.value)  # fmt: skip
    for r in ev.results:
        if r.effective is None:
            continue
        priority = logging.WARNING if r.effective is Severity.WARN else logging.ERROR
        detail = "; ".join(h.detail for h in r.hits[:3])
        logsetup.event("posture_finding", f"{r.finding.id} ({r.effective.value}): {detail}",
                       priority=priority, finding=r.finding.id)  # fmt: skip
