"""The ordered vocabularies of posture: deployment profiles and gate severities.

Why ordered enums: every guarantee of the evaluator is a comparison. A stricter profile
never gates a finding less than a looser one; a waiver never lowers ``startup_fail``; an
effective severity is the max of what applies. Keeping the order in one place (``rank``)
lets the property tests state those rules directly. Pure.
"""

from __future__ import annotations

from enum import StrEnum


class Profile(StrEnum):
    """How much the deployment promises, loosest first."""

    LOCAL = "local"
    HOSTED_LAB = "hosted_lab"
    PRODUCTION = "production"
    EVIDENCE_GRADE = "evidence_grade"

    @property
    def rank(self) -> int:
        return PROFILE_ORDER.index(self)


PROFILE_ORDER: tuple[Profile, ...] = (
    Profile.LOCAL,
    Profile.HOSTED_LAB,
    Profile.PRODUCTION,
    Profile.EVIDENCE_GRADE,
)


class Severity(StrEnum):
    """What a standing finding does under a profile, mildest first.

    ``finding_warn`` and ``finding_error`` are reported (and logged); ``readiness_fail``
    also makes ``/readyz`` not ready; ``startup_fail`` stops the daemon before it listens.
    """

    WARN = "finding_warn"
    ERROR = "finding_error"
    READINESS = "readiness_fail"
    STARTUP = "startup_fail"

    @property
    def rank(self) -> int:
        return SEVERITY_ORDER.index(self) + 1


SEVERITY_ORDER: tuple[Severity, ...] = (
    Severity.WARN,
    Severity.ERROR,
    Severity.READINESS,
    Severity.STARTUP,
)


def severity_rank(value: Severity | None) -> int:
    """0 for "not applicable / not gated", else 1 (warn) .. 4 (startup_fail)."""
    return 0 if value is None else value.rank


class EvidenceKind(StrEnum):
    """What an operator can declare about the deployment that the host cannot show."""

    BACKUPS = "backups"
    KEY_CUSTODY = "key_custody"
    REVIEW = "review"
    SANDBOX = "sandbox"
    MONITORING = "monitoring"
