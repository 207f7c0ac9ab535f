"""Gates, evidence and waivers over the hits: the posture of one deployment, as values.

The steps, in order, for each catalogue finding that has at least one hit:

1. The gate is the catalogue's severity for the finding under the profile (None: not
   applicable; reported, never counted).
2. Declared evidence of the finding's ``satisfied_by`` kind, valid on ``now``, satisfies
   it: it stands no more (effective None), and the evidence is named.
3. A waiver for the finding, active on ``now``, excuses it (effective None) unless the
   gate is ``startup_fail`` or the finding is not waivable: then the waiver is refused
   and the gate stands. Config load already refuses such a waiver for the configured
   profile; step 3 holds the line for ``assay doctor --profile`` too.
4. An expired waiver never applies; each is a ``POS-WAIVER-EXPIRED`` hit of its own.

``report()`` renders an ``Evaluation`` as the JSON-able dict that ``/admin/v1/posture``
and ``assay doctor --json`` print. Pure: ``now`` is passed in.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from assay.core.posture.catalogue import BY_ID, FINDINGS, Finding
from assay.core.posture.config import DeploymentSection, Evidence, Waiver
from assay.core.posture.model import SEVERITY_ORDER, Profile, Severity, severity_rank
from assay.core.posture.observations import Hit, Observations, hits

SCHEMA = "assay.posture.v1"


@dataclass(frozen=True)
class Result:
    finding: Finding
    gate: Severity | None
    effective: Severity | None
    hits: tuple[Hit, ...]
    waiver: Waiver | None = None
    #: Why a waiver for this finding did not apply (expired, startup gate, not waivable).
    waiver_refused: str | None = None
    evidence: Evidence | None = None


@dataclass(frozen=True)
class Evaluation:
    daemon: str
    profile: Profile
    now: dt.datetime
    results: tuple[Result, ...]
    deployment: DeploymentSection
    #: What the judgement was made from, so it can be made again at another time.
    observations: Observations | None = None

    def standing(self, severity: Severity) -> list[str]:
        """Ids of findings whose effective severity is exactly ``severity``."""
        return [r.finding.id for r in self.results if r.effective is severity]

    @property
    def worst(self) -> Severity | None:
        ranks = [severity_rank(r.effective) for r in self.results]
        top = max(ranks, default=0)
        return None if top == 0 else SEVERITY_ORDER[top - 1]

    @property
    def startup_failures(self) -> list[str]:
        return self.standing(Severity.STARTUP)

    @property
    def readiness_failures(self) -> list[str]:
        """Findings that keep ``/readyz`` not ready: readiness_fail and startup_fail."""
        return self.standing(Severity.READINESS) + self.standing(Severity.STARTUP)


def _waiver_hits(deployment: DeploymentSection, day: dt.date) -> list[Hit]:
    return [
        Hit(
            "POS-WAIVER-EXPIRED",
            w.finding,
            f"waiver for {w.finding} by {w.approver} expired {w.expires.isoformat()}",
        )
        for w in deployment.waivers
        if not w.active_on(day)
    ]


def _judge(
    row: Finding, found: tuple[Hit, ...], profile: Profile,
    deployment: DeploymentSection, day: dt.date,
) -> Result:  # fmt: skip
    gate = row.gate(profile)  # step 1
    if gate is None:
        return Result(row, None, None, found)
    if row.satisfied_by is not None:  # step 2
        for ev in deployment.evidence:
            if ev.kind is row.satisfied_by and ev.valid_on(day):
                return Result(row, gate, None, found, evidence=ev)
    waiver = next((w for w in deployment.waivers if w.finding == row.id), None)
    if waiver is None:
        return Result(row, gate, gate, found)
    if not waiver.active_on(day):  # step 4
        refused = f"expired {waiver.expires.isoformat()}"
    elif gate is Severity.STARTUP:  # step 3
        refused = f"startup_fail under {profile.value} cannot be waived"
    elif not row.waivable:
        refused = "not waivable"
    else:
        return Result(row, gate, None, found, waiver=waiver)
    return Result(row, gate, gate, found, waiver=waiver, waiver_refused=refused)


def evaluate(
    observations: Observations,
    deployment: DeploymentSection,
    *,
    now: dt.datetime,
    profile: Profile | None = None,
) -> Evaluation:
    """The posture of ``observations`` under ``profile`` (default: the configured one)."""
    chosen = deployment.profile if profile is None else profile
    day = now.astimezone(dt.UTC).date()
    grouped: dict[str, list[Hit]] = {}
    for hit in hits(observations) + _waiver_hits(deployment, day):
        row = BY_ID[hit.finding]
        if observations.daemon in row.daemons:
            grouped.setdefault(hit.finding, []).append(hit)
    # Evidence findings fire on absence: always hit, satisfied (step 2) when declared.
    for row in FINDINGS:
        if row.id.startswith("POS-EVIDENCE-"):
            grouped.setdefault(row.id, []).append(
                Hit(row.id, "deployment", f"no valid {row.satisfied_by} evidence declared")
            )
    results = tuple(
        _judge(row, tuple(grouped[row.id]), chosen, deployment, day)
        for row in FINDINGS
        if row.id in grouped
    )
    return Evaluation(observations.daemon, chosen, now, results, deployment, observations)


def _result_dict(r: Result) -> dict[str, Any]:
    return {
        "id": r.finding.id,
        "title": r.finding.title,
        "severity": r.gate.value if r.gate is not None else "not_applicable",
        "effective": r.effective.value if r.effective is not None else None,
        "stands": r.effective is not None,
        "waived": r.waiver is not None and r.waiver_refused is None,
        "waiver": None if r.waiver is None else {
            **r.waiver.model_dump(mode="json"), "refused": r.waiver_refused,
        },
        "evidence": None if r.evidence is None else r.evidence.model_dump(mode="json"),
        "hits": [{"subject": h.subject, "detail": h.detail} for h in r.hits],
        "remediation": r.finding.remediation,
    }  # fmt: skip


def report(evaluation: Evaluation) -> dict[str, Any]:
    """The posture report: a JSON-able dict (schema ``assay.posture.v1``).

    ``ok`` is false while a readiness_fail or startup_fail finding stands; ``counts``
    counts standing findings by effective severity. Hits name paths, modes and key roles,
    never a secret's value.
    """
    counts = {s.value: len(evaluation.standing(s)) for s in SEVERITY_ORDER}
    return {
        "schema": SCHEMA,
        "daemon": evaluation.daemon,
        "profile": evaluation.profile.value,
        "evaluated_at": evaluation.now.astimezone(dt.UTC).isoformat().replace("+00:00", "Z"),
        "ok": not evaluation.readiness_failures,
        "worst": evaluation.worst.value if evaluation.worst is not None else None,
        "counts": counts,
        "startup_fail": evaluation.startup_failures,
        "readiness_fail": evaluation.standing(Severity.READINESS),
        "findings": [_result_dict(r) for r in evaluation.results],
        "evidence": [e.model_dump(mode="json") for e in evaluation.deployment.evidence],
        "waivers": [w.model_dump(mode="json") for w in evaluation.deployment.waivers],
    }
