"""What a daemon does with its posture: refuse to start, or report it in ``/readyz``.

Why a small object of its own: the registry and the relay gate the same way. The host is
probed once, at startup (the probe is blocking and may verify the whole audit log); the
judgement over those observations is made again at every ``readiness()`` and
``report()`` with the clock's date, so a waiver or an evidence declaration that expires
while the daemon runs stops applying that day, without I/O. Pure.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from assay.core.errors import PostureRefused
from assay.core.posture.evaluate import Evaluation, evaluate, report


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class PostureGate:
    #: The startup evaluation: what ``enforce_startup`` judges.
    startup: Evaluation
    clock: Callable[[], dt.datetime] = field(default=_utc_now)

    @property
    def evaluation(self) -> Evaluation:
        """The startup observations judged again now (dates of waivers and evidence)."""
        ev = self.startup
        if ev.observations is None:
            return ev
        return evaluate(ev.observations, ev.deployment, now=self.clock(), profile=ev.profile)

    def enforce_startup(self) -> None:
        """Raise ``PostureRefused`` naming every standing startup_fail finding."""
        ev = self.startup
        failed = [r for r in ev.results if r.finding.id in ev.startup_failures]
        if not failed:
            return
        reasons = [
            f"{r.finding.id}: {r.finding.title} ({'; '.join(h.detail for h in r.hits[:3])}). "
            f"Fix: {r.finding.remediation}"
            for r in failed
        ]
        raise PostureRefused(
            f"deployment profile {ev.profile.value} refuses to start: "
            + ", ".join(r.finding.id for r in failed)
            + " (run `assay doctor` for the full report)",
            reasons=reasons,
        )

    def readiness(self) -> dict[str, Any]:
        """The ``posture`` check: not ok while a readiness_fail finding stands.

        Public ``/readyz`` shows only the check's name in ``failing``; the finding ids
        are here, in the check, which only a caller with the details scope sees.
        """
        ev = self.evaluation
        failing = ev.readiness_failures
        return {
            "ok": not failing,
            "profile": ev.profile.value,
            "findings": failing,
            "worst": ev.worst.value if ev.worst else None,
        }

    def report(self) -> dict[str, Any]:
        return report(self.evaluation)
