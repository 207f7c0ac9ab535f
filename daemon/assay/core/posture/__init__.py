"""Deployment posture: profiles, the finding catalogue, evidence, waivers (docs/posture.md).

Pure over values (listed in ``assay.purity``): ``model`` (profiles, severities),
``catalogue`` (every finding and its gate per profile), ``config`` (the ``deployment:``
section of both daemons' configs), ``observations`` (what a probe saw, and the rules
that turn it into hits) and ``evaluate`` (gates, evidence, waivers; ``report``).

The I/O lives in thin adapters, not imported here: ``assay.core.posture.probe`` (looks at
the host: modes, unit sandbox scores, key ages, the audit chain, secrets),
``assay.core.posture.assess`` (probe + evaluate; journal the result) and, for what to
look at, ``assay.registry.posture`` / ``assay.relay.posture``.

Entry points (for ``GET /admin/v1/posture`` and anything else that reports posture)
--------------------------------------------------------------------------------------
* ``assay.core.posture.report(evaluation) -> dict``: the JSON-able posture report (schema
  ``assay.posture.v1``), exactly what ``assay doctor --json`` prints per daemon.
* ``assay.registry.posture.registry_posture(cfg, base=..., source=...)`` and
  ``assay.relay.posture.relay_posture(cfg, base=..., source=...)`` -> ``Evaluation``:
  probe and evaluate one deployment now (blocking: call through ``trio.to_thread``;
  ``thorough=True`` by default, i.e. it verifies the whole audit log).
* ``assay.core.posture.gate.PostureGate``: what each daemon builds at startup
  (``registry.daemon.run`` / ``relay.daemon.run``, local name ``posture``):
  ``enforce_startup()`` raises ``PostureRefused`` naming each startup_fail finding,
  ``readiness()`` is the ``posture`` check of ``/readyz``, ``report()`` is
  ``report(gate.evaluation)`` (the startup observations judged on today's date, so an
  expired waiver shows), the cheap answer for the admin route.
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
