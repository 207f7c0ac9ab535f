"""kill -9 the real daemon under concurrent mutating load, round after round.

Every acknowledged mutation (a 2xx with a signed receipt) must survive: its record is in
the log with the receipt's seq and hash, and the registry shows its state. Conversely no
record may claim a change the registry does not show, and no change may lack its record.
After each kill the log verifies, or startup refuses a torn tail until
``assay audit recover`` repairs it (one round tears the tail on purpose, so that path is
always taken at least once).

A second test holds the SQLite write lock so the daemon is killed exactly between "record
durable" and "database committed": startup reconciliation must replay the records.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.numpy import save as st_save

from assay.core.audit.keys import load_public_key
from assay.core.audit.receipt import verify_receipt
from tests.conftest import Deployment, list_all, run_cli, upload

pytestmark = pytest.mark.e2e

ROUNDS = 12
WORKERS = 4
MAX_OPS_PER_WORKER = 200
TORN_ROUND = 2
MAX_WAIT_POLLS = 6000  # x 5 ms: bounded waits, never asserted on time


def artifact(round_: int, worker: int, i: int) -> bytes:
    """Distinct valid safetensors bytes for every (round, worker, i)."""
    return st_save({"w": np.array([round_, worker, i, 7], dtype=np.int32)})


@dataclass(frozen=True)
class Ack:
    digest: str
    action: str  # artifact.ingest | artifact.promote
    seq: int
    record_hash: str


@dataclass
class Load:
    """What the workers saw: acknowledged mutations and anything unexpected."""

    acks: list[Ack] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)


def acknowledge(load: Load, public: Any, r: httpx.Response, digest: str, action: str) -> None:
    receipt = verify_receipt(r.headers["assay-receipt"], public)
    assert receipt.action == action and receipt.target == digest, receipt
    with load.lock:
        load.acks.append(Ack(digest, action, receipt.seq, receipt.record_hash))


def worker(dep: Deployment, public: Any, load: Load, round_: int, wid: int) -> None:
    headers = {"Authorization": f"Bearer {dep.admin_token}"}
    try:
        with httpx.Client(base_url=dep.url, headers=headers, timeout=30.0) as c:
            for i in range(MAX_OPS_PER_WORKER):
                if load.stop.is_set():
                    return
                r = upload(c, artifact(round_, wid, i), name=f"crash/r{round_}/w{wid}/{i}")
                if r.status_code != 201:
                    load.unexpected.append(f"upload {r.status_code} {r.text}")
                    return
                digest = r.json()["artifact"]["digest"]
                acknowledge(load, public, r, digest, "artifact.ingest")
                r = c.post(f"/v1/artifacts/{digest}/promote")
                if r.status_code != 200:
                    load.unexpected.append(f"promote {r.status_code} {r.text}")
                    return
                acknowledge(load, public, r, digest, "artifact.promote")
    except httpx.TransportError:
        return  # the daemon was killed under us: this request was never acknowledged
    except Exception as exc:  # a missing or bad receipt on a 2xx, say
        load.unexpected.append(repr(exc))


def wait_for(condition: Any, what: str) -> None:
    for _ in range(MAX_WAIT_POLLS):
        if condition():
            return
        threading.Event().wait(0.005)
    raise AssertionError(f"never happened: {what}")


def secrets_of(dep: Deployment) -> dict[str, Path]:
    s = dep.dir / "secrets"
    return {
        "hmac": s / "audit-hmac.key",
        "signing": s / "audit-signing.key",
        "public": s / "audit-signing.pub",
    }


def restart(dep: Deployment) -> bool:
    """Start again; on a torn tail, ``assay audit recover`` first. True if it recovered."""
    mark = len(dep.stderr())
    try:
        dep.start()
        return False
    except AssertionError:
        err = dep.stderr()[mark:]
        assert "audit.needs_recovery" in err, err
    keys = secrets_of(dep)
    out = run_cli(
        "audit", "recover", str(dep.audit_dir),
        "--key-file", str(keys["hmac"]), "--signing-key", str(keys["signing"]), "--json",
        check=True,
    )  # fmt: skip
    assert json.loads(out.stdout)["recovered"] is True
    dep.start()
    return True


def verify_log(dep: Deployment) -> None:
    keys = secrets_of(dep)
    args = ["audit", "verify", str(dep.audit_dir), "--key-file", str(keys["hmac"]), "--json"]
    checkpoints = dep.audit_dir / "checkpoints.jsonl"
    if checkpoints.exists():
        args += ["--checkpoint", str(checkpoints), "--public-key", str(keys["public"])]
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def tear_tail(dep: Deployment) -> None:
    """What a crash in the middle of write(2) leaves: half a record, no newline."""
    current = dep.audit_dir / "audit.jsonl"
    last = current.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    with current.open("ab") as f:
        f.write(last[: len(last) // 2])


def registry_states(dep: Deployment) -> dict[str, str]:
    with dep.client() as c:
        return {a["digest"]: a["state"] for a in list_all(c)}


def check_log_and_registry(dep: Deployment, acks: list[Ack]) -> set[int]:
    """Assert the invariants that hold; return the seqs of records the registry lacks."""
    records = {rec["seq"]: rec for rec in dep.audit_records()}
    states = registry_states(dep)
    # Every acknowledged mutation is in the log, exactly as its receipt says ...
    for ack in acks:
        rec = records.get(ack.seq)
        assert rec is not None, f"acknowledged record {ack.seq} lost"
        assert (rec["record_hash"], rec["action"], rec["target"]) == (
            ack.record_hash,
            ack.action,
            ack.digest,
        )
        # ... and in the registry.
        allowed = {"trusted"} if ack.action == "artifact.promote" else {"quarantined", "trusted"}
        assert states.get(ack.digest) in allowed, (ack, states.get(ack.digest))
    # No change lacks its record.
    ingested = {r["target"] for r in records.values() if r["action"] == "artifact.ingest"}
    promoted = {r["target"] for r in records.values() if r["action"] == "artifact.promote"}
    assert set(states) <= ingested
    assert {d for d, s in states.items() if s == "trusted"} <= promoted
    # No record may claim a change the registry does not show (reconcile replays it).
    return {
        seq
        for seq, r in records.items()
        if (r["action"] == "artifact.ingest" and r["target"] not in states)
        or (r["action"] == "artifact.promote" and states.get(r["target"]) != "trusted")
    }


def test_kill_9_under_concurrent_load_loses_no_acknowledged_mutation(
    stopped_deployment: Deployment,
) -> None:
    dep = stopped_deployment
    public = load_public_key(secrets_of(dep)["public"])
    dep.start()
    all_acks: list[Ack] = []
    recovered_rounds = []
    unreflected: set[int] = set()
    for round_ in range(ROUNDS):
        load = Load()
        threads = [
            threading.Thread(target=worker, args=(dep, public, load, round_, w), daemon=True)
            for w in range(WORKERS)
        ]
        for t in threads:
            t.start()
        # Kill at a different depth of load each round, with requests in flight.
        target = 4 + 3 * round_
        wait_for(lambda ld=load, n=target: len(ld.acks) >= n or bool(ld.unexpected), "acks")
        assert not load.unexpected, load.unexpected
        assert dep.stop(signal.SIGKILL) == -signal.SIGKILL
        load.stop.set()
        for t in threads:
            t.join(timeout=60)
            assert not t.is_alive()
        assert not load.unexpected, load.unexpected
        all_acks += load.acks
        if round_ == TORN_ROUND:
            tear_tail(dep)
        if restart(dep):
            recovered_rounds.append(round_)
        verify_log(dep)
        unreflected |= check_log_and_registry(dep, all_acks)
    assert TORN_ROUND in recovered_rounds
    recover_records = [r for r in dep.audit_records() if r["action"] == "audit.recover"]
    assert len(recover_records) == len(recovered_rounds)
    assert all((dep.audit_dir / r["target"]).is_file() for r in recover_records)  # evidence
    dep.stop()
    verify_log(dep)
    assert len({a.digest for a in all_acks}) >= ROUNDS * 2
    assert not unreflected, (
        f"records {sorted(unreflected)} are in the log but not in the registry after restart"
    )


def test_records_durable_before_the_database_commit_are_replayed_after_kill_9(
    stopped_deployment: Deployment,
) -> None:
    """Kill the daemon exactly between "record fsynced" and "SQLite committed"."""
    dep = stopped_deployment
    dep.start()
    with dep.client() as c:
        r = upload(c, artifact(99, 0, 0), name="m/revoked-in-crash")
        victim = r.json()["artifact"]["digest"]
        assert c.post(f"/v1/artifacts/{victim}/promote").status_code == 200
    newcomer_bytes = artifact(99, 0, 1)
    db = sqlite3.connect(dep.dir / "state" / "registry.db", isolation_level=None, timeout=0)
    db.execute("BEGIN IMMEDIATE")  # every daemon write now waits for this lock
    outcomes: list[str] = []

    def call(kind: str) -> None:
        with dep.client() as c:
            try:
                if kind == "revoke":
                    r = c.post(
                        f"/v1/artifacts/{victim}/revoke",
                        json={"reason": "crash window"},
                        headers={"X-Request-Id": "crash-revoke"},
                    )
                else:
                    r = c.post(
                        "/v1/artifacts",
                        params=[("name", "m/ingested-in-crash"), ("meta", "source=t"),
                                ("meta", "license=mit")],
                        content=newcomer_bytes,
                        headers={"X-Request-Id": "crash-ingest"},
                    )  # fmt: skip
                outcomes.append(f"{kind} {r.status_code}")
            except httpx.TransportError:
                outcomes.append(f"{kind} killed")

    threads = [threading.Thread(target=call, args=(k,), daemon=True) for k in ("revoke", "ingest")]
    try:
        for t in threads:
            t.start()

        def both_durable() -> bool:  # raw bytes: the daemon may be mid-append
            text = (dep.audit_dir / "audit.jsonl").read_bytes()
            return all(f'"request_id":"crash-{k}"'.encode() in text for k in ("revoke", "ingest"))

        wait_for(both_durable, "both records fsynced while the database is locked")
        dep.stop(signal.SIGKILL)
    finally:
        db.rollback()
        db.close()
    for t in threads:
        t.join(timeout=60)
    assert not any(o.split()[1].startswith("2") for o in outcomes), outcomes  # never acked
    by_rid = {r["request_id"]: r for r in dep.audit_records()}
    revoke_rec, ingest_rec = by_rid["crash-revoke"], by_rid["crash-ingest"]
    assert revoke_rec["action"] == "artifact.revoke" and ingest_rec["action"] == "artifact.ingest"

    restart(dep)
    assert "reconciled 2 mutation(s)" in dep.stderr()
    with dep.client() as c:
        shown = c.get(f"/v1/artifacts/{victim}").json()
        assert shown["artifact"]["state"] == "revoked"
        assert shown["history"][-1]["action"] == "revoke"
        assert shown["history"][-1]["audit_seq"] == revoke_rec["seq"]
        assert shown["history"][-1]["reasons"] == ["crash window"]
        new = c.get(f"/v1/artifacts/{ingest_rec['target']}").json()
        assert new["artifact"]["state"] == "quarantined"
        assert new["artifact"]["name"] == "m/ingested-in-crash"
        assert new["artifact"]["metadata"] == {"source": "t", "license": "mit"}
        assert new["artifact"]["integrity"] == "ok"
        assert new["history"][0]["audit_seq"] == ingest_rec["seq"]
        # Replay is idempotent: a second restart applies nothing more.
    mark = len(dep.stderr())
    dep.stop()
    dep.start()
    assert "reconciled" not in dep.stderr()[mark:]
    assert registry_states(dep)[victim] == "revoked"
    dep.stop()
    verify_log(dep)
