"""What a daemon does with its posture: refuse to start, or report it in ``/readyz``.

Why a small object of its own: the registry and the relay gate the same way. The
evaluation is taken once at startup (the probe is blocking and may verify the whole audit
log); ``/readyz`` then answers from it without I/O. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from assay.core.errors import PostureRefused
from assay.core.posture.evaluate import Evaluation, report


@dataclass
class PostureGate:
    evaluation: Evaluation

    def enforce_startup(self) -> None:
        """Raise ``PostureRefused`` naming every standing startup_fail finding."""
        failed = [r for r in self.evaluation.results if r.finding.id in
                  self.evaluation.startup_failures]  # fmt: skip
        if not failed:
            return
        reasons = [
            f"{r.finding.id}: {r.finding.title} ({'; '.join(h.detail for h in r.hits[:3])}). "
            f"Fix: {r.finding.remediation}"
            for r in failed
        ]
        raise PostureRefused(
            f"deployment profile {self.evaluation.profile.value} refuses to start: "
            + ", ".join(r.finding.id for r in failed)
            + " (run `assay doctor` for the full report)",
            reasons=reasons,
        )

    def readiness(self) -> dict[str, Any]:
        """The ``posture`` check: not ok while a readiness_fail finding stands.

        Public ``/readyz`` shows only the check's name in ``failing``; the finding ids
        are here, in the check, which only a caller with the details scope sees.
        """
        failing = self.evaluation.readiness_failures
        return {
            "ok": not failing,
            "profile": self.evaluation.profile.value,
            "findings": failing,
            "worst": self.evaluation.worst.value if self.evaluation.worst else None,
        }

    def report(self) -> dict[str, Any]:
        return report(self.evaluation)
