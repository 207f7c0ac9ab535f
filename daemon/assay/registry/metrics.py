"""The registry's gauges on the admin listener's ``/metrics``: artifacts and sweeps.

Labelled only by the state machine's own names (``assay.registry.states``), never by a
digest, a name or a path: the counts are what an operator alerts on (quarantined piling
up, integrity failures, a sweep that stalls), and cost one series per state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime

from prometheus_client.core import GaugeMetricFamily, Metric

from assay.registry.service import Registry


def _epoch(value: object) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def registry_gauges(registry: Registry) -> Callable[[], Iterable[Metric]]:
    def collect() -> Iterable[Metric]:
        counts = registry.counts()
        failed = counts.pop("integrity_failed", 0)
        states = GaugeMetricFamily(
            "assay_registry_artifacts", "Artifacts by state.", labels=("state",)
        )
        for state, count in sorted(counts.items()):
            states.add_metric((state,), float(count))
        integrity = GaugeMetricFamily(
            "assay_registry_integrity_failed_artifacts",
            "Artifacts whose bytes no longer match their digest.",
        )
        integrity.add_metric((), float(failed))
        running = GaugeMetricFamily("assay_registry_sweep_running", "1 while a sweep re-hashes.")
        done = GaugeMetricFamily(
            "assay_registry_sweep_hashed_artifacts",
            "Artifacts the running sweep has re-hashed so far.",
        )
        todo = GaugeMetricFamily(
            "assay_registry_sweep_total_artifacts", "Artifacts the running sweep will re-hash."
        )
        progress = registry.sweep_progress
        running.add_metric((), 0.0 if progress is None else 1.0)
        done.add_metric((), float(progress[0]) if progress else 0.0)
        todo.add_metric((), float(progress[1]) if progress else 0.0)
        out: list[Metric] = [states, integrity, running, done, todo]
        last = registry.last_sweep
        if last is not None:
            finished = _epoch(last.get("finished"))
            if finished is not None:
                when = GaugeMetricFamily(
                    "assay_registry_last_sweep_finished_timestamp_seconds",
                    "When the last sweep finished (Unix time).",
                )
                when.add_metric((), finished)
                out.append(when)
            checked = GaugeMetricFamily(
                "assay_registry_last_sweep_checked_artifacts", "Artifacts the last sweep checked."
            )
            checked.add_metric((), float(last.get("checked", 0)))
            bad = GaugeMetricFamily(
                "assay_registry_last_sweep_failed_artifacts",
                "Artifacts the last sweep found altered.",
            )
            bad.add_metric((), float(len(last.get("failed", ()))))
            out += [checked, bad]
        return out

    return collect
