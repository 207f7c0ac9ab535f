"""Restart cost follows unreconciled mutations, not traffic: the real daemon, a large log.

Counted, never timed: ``/v1/status`` reports what startup replay read (``replay``) and
the mark saved while serving (``replay_mark``). The curves are in docs/benchmarks.md
(benchmarks/bench_restart.py).
"""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from tests.conftest import Deployment, list_all
from tests.fill import fill

pytestmark = pytest.mark.e2e

READS = 20_000
MAX_POLLS = 400  # x 25 ms


def status(dep: Deployment) -> dict[str, Any]:
    with dep.client() as c:
        r = c.get("/v1/status")
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body


def test_a_clean_restart_reads_no_record_however_long_the_log(
    stopped_deployment: Deployment,
) -> None:
    dep = stopped_deployment
    filled = fill(dep.config, artifacts=50, reads=READS, mark_reconciled=False)
    dep.start()  # the first start after an offline fill reads it once
    first = status(dep)["replay"]
    assert first["scanned"] >= READS and first["applied"] == 0
    assert first["mutations"] == 50  # the ingests, already in the database
    dep.stop()
    dep.start()
    again = status(dep)["replay"]
    assert again == {"scanned": 0, "mutations": 0, "applied": 0, "mark": again["mark"]}
    assert again["mark"] > filled.head_seq
    assert "last start replayed 0 audit records" in dep.cli("status").stdout


def test_a_crash_restart_reads_only_what_the_mark_had_not_covered(
    stopped_deployment: Deployment,
) -> None:
    dep = stopped_deployment
    digests = fill(dep.config, artifacts=20, reads=READS).digests
    dep.start()
    with dep.client() as c:
        for i in range(200):  # ordinary reads while serving
            assert c.get(f"/v1/trusted/fill/m{i % 20}").status_code == 200
    # Wait (bounded) until the mark saved while serving covers those reads.
    target = status(dep)["replay_mark"] + 200
    for _ in range(MAX_POLLS):
        if status(dep)["replay_mark"] >= target:
            break
        time.sleep(0.025)
    else:
        raise AssertionError("the replay mark did not advance while serving")
    dep.stop(signal.SIGKILL)
    dep.start()
    replay = status(dep)["replay"]
    # Only the status polls after the last saved mark remain, never the traffic.
    assert replay["scanned"] <= MAX_POLLS + 10 and replay["applied"] == 0
    with dep.client() as c:
        assert {a["digest"] for a in list_all(c)} == set(digests)


def test_unreconciled_mutations_are_replayed_and_only_those(
    stopped_deployment: Deployment,
) -> None:
    """A kill -9 between each record and its commit, 300 times over: exactly those are
    applied, past a log of ordinary reads that is never replayed."""
    dep = stopped_deployment
    fill(dep.config, artifacts=300, reads=READS, trusted=False, unreconciled=300)
    dep.start()
    replay = status(dep)["replay"]
    assert replay == {"scanned": 300, "mutations": 300, "applied": 300, "mark": replay["mark"]}
    with dep.client() as c:
        assert {a["state"] for a in list_all(c)} == {"trusted"}
    assert "reconciled 300 mutation(s)" in dep.stderr()
