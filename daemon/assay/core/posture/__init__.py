"""Deployment posture: profiles, the finding catalogue, evidence, waivers (docs/posture.md).

Pure over values (listed in ``assay.purity``): ``model`` (profiles, severities),
``catalogue`` (every finding and its gate per profile), ``config`` (the ``deployment:``
section of both daemons' configs), ``observations`` (what a probe saw, and the rules
that turn it into hits) and ``evaluate`` (gates, evidence, waivers; ``report``).

The I/O lives in two thin adapters, not imported here: ``assay.core.posture.probe``
(looks at the host: modes, unit sandbox scores, key ages, the audit chain, secrets) and
``assay.core.posture.targets`` (what to look at, from a loaded registry or relay config).

Entry points
------------
* ``report(evaluation) -> dict``: the JSON-able posture report (schema
  ``assay.posture.v1``), what ``GET /admin/v1/posture`` serves and ``assay doctor
  --json`` prints.
* ``assay.core.posture.targets.registry_posture(loaded, now=...)`` /
  ``relay_posture(loaded, now=...)`` -> ``Evaluation``: probe and evaluate one
  deployment (blocking: call it through ``trio.to_thread``). The admin route serves
  ``report(...)`` of the daemon's ``PostureGate.evaluation`` (taken at startup, see
  ``assay.core.posture.gate``) or of a fresh ``*_posture(loaded)`` call.
* ``assay.core.posture.gate.PostureGate``: what a daemon holds at startup;
  ``enforce_startup()`` raises ``PostureRefused`` naming each startup_fail finding,
  ``readiness()`` is the ``posture`` check of ``/readyz``.
"""

from __future__ import annotations

from assay.core.posture.catalogue import BY_ID, FINDINGS, Finding
from assay.core.posture.config import DeploymentSection, Evidence, Waiver
from assay.core.posture.evaluate import SCHEMA, Evaluation, Result, evaluate, report
from assay.core.posture.model import EvidenceKind, Profile, Severity
from assay.core.posture.observations import Observations

__all__ = [
    "BY_ID",
    "FINDINGS",
    "SCHEMA",
    "DeploymentSection",
    "Evaluation",
    "Evidence",
    "EvidenceKind",
    "Finding",
    "Observations",
    "Profile",
    "Result",
    "Severity",
    "Waiver",
    "evaluate",
    "report",
]
