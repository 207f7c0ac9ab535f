"""The ``deployment:`` config section, shared by the registry and the relay.

Optional: absent means profile ``local`` with no evidence and no waivers, so every config
written before it stays valid. Validated strictly at load, like every section, and
refused there when a waiver names an unknown finding, a finding that cannot be waived
(``POS-WAIVER-EXPIRED``), or one whose gate under the configured profile is
``startup_fail``: a startup gate is a promise the operator cannot sign away. An expired
waiver is not refused (it is reported as ``POS-WAIVER-EXPIRED``), so an expiry never
turns a running deployment into one that will not even parse its config. Pure.
"""

from __future__ import annotations

import datetime as dt

from pydantic import Field, model_validator

from assay.core.posture.catalogue import BY_ID
from assay.core.posture.model import EvidenceKind, Profile, Severity
from assay.core.schema import Strict

TEXT = r"^[^\x00-\x1f\x7f]{1,500}$"


class Evidence(Strict):
    """Something the operator declares that the host cannot show (a backup, a review).

    Recorded as given in every posture report; satisfies the catalogue's findings of
    its ``kind`` while unexpired.
    """

    kind: EvidenceKind
    #: Where the evidence is: a ticket, a document, a URL. Never the evidence's content.
    reference: str = Field(pattern=TEXT)
    declared_by: str = Field(pattern=TEXT)
    date: dt.date
    #: Last day the declaration holds (UTC); absent = it does not lapse by itself.
    expires: dt.date | None = None

    def valid_on(self, day: dt.date) -> bool:
        return self.date <= day and (self.expires is None or day <= self.expires)


class Waiver(Strict):
    """A finding the operator accepts, for a reason, signed off, until a date."""

    finding: str = Field(pattern=r"^POS-[A-Z0-9-]{1,60}$")
    reason: str = Field(pattern=TEXT)
    approver: str = Field(pattern=TEXT)
    #: Mandatory: last day (UTC) the waiver applies; the next day it is a finding itself.
    expires: dt.date

    def active_on(self, day: dt.date) -> bool:
        return day <= self.expires


class DeploymentSection(Strict):
    profile: Profile = Profile.LOCAL
    evidence: list[Evidence] = Field(default_factory=list, max_length=64)
    waivers: list[Waiver] = Field(default_factory=list, max_length=64)

    @model_validator(mode="after")
    def _waivers_allowed(self) -> DeploymentSection:
        problems: list[str] = []
        seen: set[str] = set()
        for i, w in enumerate(self.waivers):
            row = BY_ID.get(w.finding)
            if row is None:
                problems.append(f"waivers[{i}].finding: no finding {w.finding!r} in the catalogue")
            elif not row.waivable:
                problems.append(f"waivers[{i}].finding: {w.finding} cannot be waived")
            elif row.gate(self.profile) is Severity.STARTUP:
                problems.append(
                    f"waivers[{i}].finding: {w.finding} is startup_fail under profile "
                    f"{self.profile.value}; a startup gate cannot be waived"
                )
            if w.finding in seen:
                problems.append(f"waivers[{i}].finding: a second waiver for {w.finding}")
            seen.add(w.finding)
        if problems:
            raise ValueError("; ".join(problems))
        return self


DEFAULT_DEPLOYMENT = DeploymentSection()
